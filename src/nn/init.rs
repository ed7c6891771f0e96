//! Parameter initialisation: PyTorch's defaults and the lesson's choices.

use crate::rng::PhiloxStream;

/// A deterministic stream of init values: each parameter draws from its own
/// Philox offset, so the init does not depend on construction order elsewhere.
pub struct Initializer {
    seed: u64,
    next_offset: u64,
}

impl Initializer {
    pub fn new(seed: u64) -> Self {
        Initializer { seed, next_offset: 0x1_0000 }
    }

    fn stream(&mut self) -> PhiloxStream {
        self.next_offset += 1;
        PhiloxStream::new(self.seed, self.next_offset)
    }

    /// U(−bound, bound): PyTorch's default for conv and linear weights and
    /// biases is bound = 1/√fan_in (kaiming_uniform with a = √5 gives the same).
    pub fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.stream().fill_uniform(0, &mut v);
        v.iter_mut().for_each(|x| *x = (2.0 * *x - 1.0) * bound);
        v
    }

    /// Standard normal draws.
    pub fn normal(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0.0; n];
        self.stream().fill_normal(0, &mut v);
        v
    }

    /// A rows × cols matrix with orthonormal rows (rows ≤ cols) or columns,
    /// as torch.nn.init.orthogonal_ on the weight flattened to [out, rest]:
    /// Gram–Schmidt (twice, for stability) on normal draws.
    pub fn orthogonal(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let (r, c, transpose) = if rows <= cols { (rows, cols, false) } else { (cols, rows, true) };
        let mut draws = vec![0f32; r * c];
        self.stream().fill_normal(0, &mut draws);
        let mut m: Vec<Vec<f64>> = draws.chunks(c).map(|row| row.iter().map(|&x| x as f64).collect()).collect();
        for i in 0..r {
            for _ in 0..2 {
                for j in 0..i {
                    let dot: f64 = (0..c).map(|k| m[i][k] * m[j][k]).sum();
                    for k in 0..c {
                        m[i][k] -= dot * m[j][k];
                    }
                }
            }
            let norm = m[i].iter().map(|x| x * x).sum::<f64>().sqrt();
            m[i].iter_mut().for_each(|x| *x /= norm);
        }
        if transpose {
            (0..rows).flat_map(|i| (0..cols).map(move |j| (i, j))).map(|(i, j)| m[j][i] as f32).collect()
        } else {
            m.into_iter().flatten().map(|x| x as f32).collect()
        }
    }
}
