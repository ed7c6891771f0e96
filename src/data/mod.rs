//! Datasets: Fashion-MNIST (IDX files, gzipped or raw; a small real sample is
//! embedded for machines without the data), CIFAR-10 (binary batches), and
//! the batching the training loop uses.

pub mod batches;
pub mod idx;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Debian's `dataset-fashion-mnist` installs the four files here.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Where train, train-classifier and the FID reference look for Fashion-MNIST
/// when no `--data` is given: `$MINIDIFFUSION_FASHION_MNIST`, else
/// [`DEFAULT_FASHION_MNIST_DIR`] (Debian's `dataset-fashion-mnist`).
pub fn fashion_mnist_dir() -> std::path::PathBuf {
    std::env::var_os("MINIDIFFUSION_FASHION_MNIST").map_or_else(|| DEFAULT_FASHION_MNIST_DIR.into(), std::path::PathBuf::from)
}

/// Images (u8, N×C×H×W) with their class labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Where it came from, for messages.
    pub source: String,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset { images: self.images[..n * self.image_len()].to_vec(), labels: self.labels[..n].to_vec(), ..self.clone() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Which dataset a command reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    FashionMnist,
    Cifar10,
}

fn fashion_prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// `dir/name.gz` when present, else `dir/name`.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(Error::Data { path: gz.display().to_string(), msg: format!("missing (neither {name}.gz nor {name} is in the directory)") })
}

/// One split of Fashion-MNIST from the IDX files in `dir`.
pub fn load_fashion_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Data { path: dir.display().to_string(), msg: "no such directory".into() });
    }
    let prefix = fashion_prefix(split);
    let images_path = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (n, rows, cols, images) = idx::parse_images(&images_path, &idx::read_maybe_gz(&images_path)?)?;
    let labels = idx::parse_labels(&labels_path, &idx::read_maybe_gz(&labels_path)?)?;
    check_counts(&images_path, n, &labels_path, labels.len())?;
    check_labels(&labels_path, &labels, 10)?;
    Ok(Dataset { images, labels, channels: 1, height: rows, width: cols, source: dir.display().to_string() })
}

fn check_counts(images: &Path, n_images: usize, labels: &Path, n_labels: usize) -> Result<()> {
    if n_images != n_labels {
        return Err(Error::Data {
            path: labels.display().to_string(),
            msg: format!("{n_labels} labels for {n_images} images in {}", images.display()),
        });
    }
    Ok(())
}

fn check_labels(path: &Path, labels: &[u8], classes: u8) -> Result<()> {
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::Data { path: path.display().to_string(), msg: format!("label {bad} is not one of the {classes} classes") });
    }
    Ok(())
}

/// The first 5,000 training and 1,000 test images of Fashion-MNIST, embedded
/// (MIT licence: data/fashion-mnist-sample/LICENSE).
pub fn embedded_fashion_mnist(split: Split) -> Result<Dataset> {
    const FILES: [(&str, &[u8]); 4] = [
        ("train-images", include_bytes!("../../data/fashion-mnist-sample/train-images-idx3-ubyte.gz")),
        ("train-labels", include_bytes!("../../data/fashion-mnist-sample/train-labels-idx1-ubyte.gz")),
        ("t10k-images", include_bytes!("../../data/fashion-mnist-sample/t10k-images-idx3-ubyte.gz")),
        ("t10k-labels", include_bytes!("../../data/fashion-mnist-sample/t10k-labels-idx1-ubyte.gz")),
    ];
    let prefix = fashion_prefix(split);
    let get = |kind: &str| FILES.iter().find(|(n, _)| *n == format!("{prefix}-{kind}")).map(|(_, b)| *b).unwrap();
    let images_path = Path::new("<embedded sample>/images");
    let labels_path = Path::new("<embedded sample>/labels");
    let (_, rows, cols, images) = idx::parse_images(images_path, &idx::decompress_if_gz(images_path, get("images").to_vec())?)?;
    let labels = idx::parse_labels(labels_path, &idx::decompress_if_gz(labels_path, get("labels").to_vec())?)?;
    Ok(Dataset { images, labels, channels: 1, height: rows, width: cols, source: "embedded Fashion-MNIST sample".into() })
}

/// CIFAR-10 from its binary batches in `dir`: `data_batch_1.bin` … `data_batch_5.bin`
/// (train; those present, at least one) or `test_batch.bin`; each record is
/// one label byte and 3072 pixel bytes, channel-major 3×32×32.
pub fn load_cifar10(dir: &Path, split: Split) -> Result<Dataset> {
    if !dir.is_dir() {
        return Err(Error::Data { path: dir.display().to_string(), msg: "no such directory".into() });
    }
    let files: Vec<PathBuf> = match split {
        Split::Train => (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin"))).filter(|p| p.is_file()).collect(),
        Split::Test => vec![dir.join("test_batch.bin")],
    };
    if files.is_empty() {
        return Err(Error::Data { path: dir.join("data_batch_1.bin").display().to_string(), msg: "missing (no CIFAR-10 training batch)".into() });
    }
    const RECORD: usize = 1 + 3 * 32 * 32;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::Data { path: f.display().to_string(), msg: format!("cannot read: {e}") })?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(Error::Data {
                path: f.display().to_string(),
                msg: format!("truncated: {} bytes is not a whole number of {RECORD}-byte records", bytes.len()),
            });
        }
        for record in bytes.chunks(RECORD) {
            labels.push(record[0]);
            images.extend_from_slice(&record[1..]);
        }
        check_labels(f, &labels, 10)?;
    }
    Ok(Dataset { images, labels, channels: 3, height: 32, width: 32, source: dir.display().to_string() })
}
