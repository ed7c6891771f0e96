//! Datasets: Fashion-MNIST IDX (gz and raw), the embedded sample, CIFAR-10
//! binary batches made here, every bad-file case, scaling/padding, shuffling.

use minidiffusion::data::batches::{InputRange, epoch_order, images_f32};
use minidiffusion::data::{self, Split};
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minidiffusion-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx_images(n: u32, rows: u32, cols: u32, fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut v = vec![];
    for x in [0x0803u32, n, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..(n * rows * cols) as usize).map(fill));
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    for x in [0x0801u32, labels.len() as u32] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write_split(dir: &Path, prefix: &str, images: &[u8], labels: &[u8], gzipped: bool) {
    let (ext, img, lab) = if gzipped { (".gz", gz(images), gz(labels)) } else { ("", images.to_vec(), labels.to_vec()) };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
}

fn err_of(r: minidiffusion::Result<data::Dataset>) -> String {
    r.map(|_| ()).unwrap_err().to_string()
}

#[test]
fn reads_idx_raw_and_gzipped() {
    for gzipped in [false, true] {
        let dir = temp_dir(&format!("ok{gzipped}"));
        write_split(&dir, "t10k", &idx_images(3, 2, 2, |i| i as u8), &idx_labels(&[1, 2, 9]), gzipped);
        let ds = data::load_fashion_mnist(&dir, Split::Test).unwrap();
        assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (3, 1, 2, 2));
        assert_eq!(ds.images, (0..12).collect::<Vec<u8>>());
        assert_eq!(ds.labels, vec![1, 2, 9]);
    }
}

#[test]
fn bad_fashion_mnist_files_name_the_file_and_the_fault() {
    let missing = err_of(data::load_fashion_mnist(Path::new("/nonexistent/fmnist"), Split::Train));
    assert!(missing.contains("/nonexistent/fmnist") && missing.contains("no such directory"), "{missing}");

    let dir = temp_dir("nofile");
    let err = err_of(data::load_fashion_mnist(&dir, Split::Train));
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("missing"), "{err}");

    let dir = temp_dir("magic");
    let mut bad = idx_images(2, 2, 2, |_| 0);
    bad[3] = 0x01;
    write_split(&dir, "train", &bad, &idx_labels(&[0, 1]), true);
    let err = err_of(data::load_fashion_mnist(&dir, Split::Train));
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("wrong magic number 0x00000801"), "{err}");

    let dir = temp_dir("trunc");
    let mut short = idx_images(4, 28, 28, |_| 0);
    short.truncate(100);
    write_split(&dir, "train", &short, &idx_labels(&[0; 4]), false);
    let err = err_of(data::load_fashion_mnist(&dir, Split::Train));
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("truncated"), "{err}");

    let dir = temp_dir("count");
    write_split(&dir, "train", &idx_images(3, 2, 2, |_| 0), &idx_labels(&[0, 1]), true);
    let err = err_of(data::load_fashion_mnist(&dir, Split::Train));
    assert!(err.contains("train-labels-idx1-ubyte.gz") && err.contains("2 labels for 3 images"), "{err}");

    let dir = temp_dir("gzip");
    let mut broken = gz(&idx_images(3, 2, 2, |_| 0));
    broken.truncate(broken.len() / 2);
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), broken).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gz(&idx_labels(&[0, 1, 2]))).unwrap();
    let err = err_of(data::load_fashion_mnist(&dir, Split::Train));
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("gzip"), "{err}");

    let dir = temp_dir("label");
    write_split(&dir, "train", &idx_images(1, 2, 2, |_| 0), &idx_labels(&[10]), false);
    let err = err_of(data::load_fashion_mnist(&dir, Split::Train));
    assert!(err.contains("label 10"), "{err}");
}

#[test]
fn embedded_sample_is_real_fashion_mnist() {
    let train = data::embedded_fashion_mnist(Split::Train).unwrap();
    let test = data::embedded_fashion_mnist(Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (5000, 1000));
    assert_eq!((train.height, train.width, train.channels), (28, 28, 1));
    // all ten classes, roughly balanced
    let mut counts = [0usize; 10];
    train.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert!(counts.iter().all(|&c| (400..=600).contains(&c)), "{counts:?}");
    // the first training image of Fashion-MNIST is an ankle boot (class 9)
    assert_eq!(train.labels[0], 9);
}

#[test]
fn matches_the_installed_dataset_when_present() {
    let dir = Path::new(data::DEFAULT_FASHION_MNIST_DIR);
    if !dir.is_dir() {
        eprintln!("SKIPPED: {} not installed (apt-get install dataset-fashion-mnist)", dir.display());
        return;
    }
    let full = data::load_fashion_mnist(dir, Split::Train).unwrap();
    assert_eq!(full.len(), 60_000);
    let test = data::load_fashion_mnist(dir, Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    let sample = data::embedded_fashion_mnist(Split::Train).unwrap();
    assert_eq!(full.take(5000).images, sample.images);
}

#[test]
fn cifar10_batches() {
    let dir = temp_dir("cifar");
    let record = |label: u8, value: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(value, 3072));
        r
    };
    std::fs::write(dir.join("data_batch_1.bin"), [record(3, 10), record(7, 20)].concat()).unwrap();
    std::fs::write(dir.join("data_batch_2.bin"), record(1, 30)).unwrap();
    std::fs::write(dir.join("test_batch.bin"), record(9, 40)).unwrap();
    let train = data::load_cifar10(&dir, Split::Train).unwrap();
    assert_eq!((train.len(), train.channels, train.height, train.width), (3, 3, 32, 32));
    assert_eq!(train.labels, vec![3, 7, 1]);
    assert_eq!(train.images[3072], 20);
    assert_eq!(data::load_cifar10(&dir, Split::Test).unwrap().labels, vec![9]);

    std::fs::write(dir.join("test_batch.bin"), &record(9, 40)[..3000]).unwrap();
    let err = err_of(data::load_cifar10(&dir, Split::Test));
    assert!(err.contains("test_batch.bin") && err.contains("truncated"), "{err}");
    let err = err_of(data::load_cifar10(&temp_dir("cifar-empty"), Split::Train));
    assert!(err.contains("data_batch_1.bin") && err.contains("missing"), "{err}");
}

#[test]
fn scaling_and_padding() {
    let ds = data::Dataset { images: vec![0, 255, 51, 255], labels: vec![0], channels: 1, height: 2, width: 2, source: "t".into() };
    let v = images_f32(&ds, &[0], 1, InputRange::Centered);
    assert_eq!(v.len(), 16);
    assert_eq!(v[0], -0.5); // border is black
    assert_eq!(&v[5..7], &[-0.5, 0.5]);
    assert!((v[9] - (51.0 / 255.0 - 0.5)).abs() < 1e-7);
    assert_eq!(images_f32(&ds, &[0], 0, InputRange::Symmetric), vec![-1.0, 1.0, 51.0 / 255.0 * 2.0 - 1.0, 1.0]);
    assert_eq!(images_f32(&ds, &[0], 0, InputRange::Unit)[1], 1.0);
    assert_eq!(InputRange::parse("-1,1").unwrap(), InputRange::Symmetric);
    assert!(InputRange::parse("0,255").unwrap_err().to_string().contains("--input-range"));
}

#[test]
fn epoch_orders_are_seeded_permutations() {
    let a = epoch_order(1000, 42, 0);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, epoch_order(1000, 42, 0));
    assert_ne!(a, epoch_order(1000, 42, 1));
    assert_ne!(a, epoch_order(1000, 43, 0));
    // not close to the identity
    assert!(a.iter().enumerate().filter(|(i, v)| i == *v).count() < 20);
}
