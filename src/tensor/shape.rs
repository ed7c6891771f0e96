//! Shapes of contiguous row-major (NCHW) tensors.

use std::fmt;

/// The dimensions of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    pub fn new(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }
    /// Numpy broadcasting of two shapes, aligned at the trailing dimension.
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let a = dim_from_end(&self.0, rank - 1 - i);
            let b = dim_from_end(&other.0, rank - 1 - i);
            out[i] = match (a, b) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => return None,
            };
        }
        Some(Shape(out))
    }
    /// Strides for reading `self` as if broadcast to `target` (0 along broadcast axes).
    pub fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let own = self.strides();
        let offset = target.rank() - self.rank();
        (0..target.rank())
            .map(|i| {
                if i < offset || self.0[i - offset] == 1 {
                    0
                } else {
                    own[i - offset]
                }
            })
            .collect()
    }
}

impl Shape {
    /// When `self` broadcast to `full` is one contiguous run of `full`'s dims
    /// (ones before and after it), element i of `full` reads element
    /// (i / inner) % middle of `self`: returns (inner, middle). Covers a bias
    /// [C] on [M, C], [1, C, 1, 1] or [N, C, 1, 1] on [N, C, H, W], and scalars.
    pub fn middle_block_of(&self, full: &Shape) -> Option<(usize, usize)> {
        let offset = full.rank().checked_sub(self.rank())?;
        let own = |d: usize| if d < offset { 1 } else { self.0[d - offset] };
        let kept: Vec<usize> = (0..full.rank()).filter(|&d| own(d) != 1).collect();
        let (first, last) = match (kept.first(), kept.last()) {
            (Some(&f), Some(&l)) => (f, l),
            _ => return Some((full.numel().max(1), 1)),
        };
        if (first..=last).any(|d| own(d) != full.0[d]) {
            return None;
        }
        let inner = full.0[last + 1..].iter().product();
        let middle = full.0[first..=last].iter().product();
        Some((inner, middle))
    }
}

fn dim_from_end(dims: &[usize], from_end: usize) -> usize {
    if from_end < dims.len() {
        dims[dims.len() - 1 - from_end]
    } else {
        1
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}
impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}
impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}
impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}

/// Visit every index of `shape` in row-major order together with the offsets
/// it maps to under two stride sets. Used by broadcasting kernels.
pub(crate) fn for_each_offset2(
    shape: &[usize],
    strides_a: &[usize],
    strides_b: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let rank = shape.len();
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return;
    }
    if rank == 0 {
        f(0, 0, 0);
        return;
    }
    let inner = shape[rank - 1];
    let (sa, sb) = (strides_a[rank - 1], strides_b[rank - 1]);
    let mut index = vec![0usize; rank];
    let (mut base_a, mut base_b) = (0usize, 0usize);
    let mut linear = 0;
    loop {
        for i in 0..inner {
            f(linear + i, base_a + i * sa, base_b + i * sb);
        }
        linear += inner;
        // odometer over the outer dims
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            base_a += strides_a[d];
            base_b += strides_b[d];
            if index[d] < shape[d] {
                break;
            }
            base_a -= strides_a[d] * shape[d];
            base_b -= strides_b[d] * shape[d];
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        let a = Shape::from([4, 1, 3]);
        let b = Shape::from([5, 1]);
        assert_eq!(a.broadcast(&b).unwrap(), Shape::from([4, 5, 3]));
        assert!(Shape::from([2, 3]).broadcast(&Shape::from([4])).is_none());
        assert_eq!(Shape::from([2, 3, 4]).strides(), vec![12, 4, 1]);
        assert_eq!(b.broadcast_strides(&Shape::from([4, 5, 3])), vec![0, 1, 0]);
    }

    #[test]
    fn middle_blocks() {
        let full = Shape::from([2, 3, 4, 5]);
        assert_eq!(Shape::from([1, 3, 1, 1]).middle_block_of(&full), Some((20, 3)));
        assert_eq!(Shape::from([2, 3, 1, 1]).middle_block_of(&full), Some((20, 6)));
        assert_eq!(Shape::from([5]).middle_block_of(&full), Some((1, 5)));
        assert_eq!(Shape::from([]).middle_block_of(&full), Some((120, 1)));
        assert_eq!(Shape::from([2, 1, 4, 1]).middle_block_of(&full), None);
        assert_eq!(full.middle_block_of(&full), Some((1, 120)));
    }

    #[test]
    fn odometer_visits_all() {
        let mut seen = vec![];
        for_each_offset2(&[2, 3], &[3, 1], &[0, 1], |i, a, b| seen.push((i, a, b)));
        assert_eq!(seen, vec![(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 0), (4, 4, 1), (5, 5, 2)]);
    }
}
