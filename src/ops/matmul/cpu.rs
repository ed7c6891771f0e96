//! Matrix products on the host through the `gemm` crate (BLIS-style packed
//! micro-kernels, SIMD, optional rayon parallelism). Every CPU op that is a
//! product (matmul, linear, conv2d via im2col, attention) goes through [`gemm`].

/// A read-only strided matrix: element (i, j) is at `data[i*row_stride + j*col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major rows×cols matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, row_stride: cols, col_stride: 1 }
    }
    /// The transpose, by swapping strides (no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride }
    }
    /// `self` or its transpose.
    pub fn t_if(self, transpose: bool) -> Self {
        if transpose { self.t() } else { self }
    }
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 { 0 } else { (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1 }
    }
}

/// c (rows a.rows, cols b.cols, row-major with row stride `c_row_stride`) =
/// a·b, or c += a·b when `accumulate`. `parallel` lets gemm use rayon threads.
pub fn gemm(a: MatRef, b: MatRef, c: &mut [f32], c_row_stride: usize, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    assert!(a.end() <= a.data.len() && b.end() <= b.data.len(), "gemm: operand out of bounds");
    assert!(m == 0 || n == 0 || (m - 1) * c_row_stride + n <= c.len(), "gemm: output out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_row_stride..i * c_row_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if parallel && m * n * k >= 1 << 16 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every access of the three strided
    // matrices inside their slices; `c` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            c_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
