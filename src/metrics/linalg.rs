//! Dense f64 matrices on the host (row-major), for the metrics: products
//! through the `gemm` crate (f64 micro-kernels, rayon when large), traces,
//! Frobenius norms.

/// c [m, n] = a [m, k] · b [k, n], all row-major.
pub fn matmul_f64(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    matmul_f64_into(a, b, &mut c, m, k, n);
    c
}

/// `c` = a·b (overwritten), row-major [m, k]·[k, n] → [m, n].
pub fn matmul_f64_into(a: &[f64], b: &[f64], c: &mut [f64], m: usize, k: usize, n: usize) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "matmul_f64: operand sizes"
    );
    // SAFETY: the assert keeps every row-major access inside a, b and c.
    unsafe { gemm_f64(c, m, n, k, a, (k, 1), b, (n, 1)) }
}

/// c [m, n] (row-major, overwritten) = A·B with A(i, p) = a[i·a_rs + p·a_cs]
/// and B(p, j) = b[p·b_rs + j·b_cs]; rayon threads when large.
///
/// # Safety
/// Every such index of A and B must lie inside `a` and `b`, and c must hold m·n.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f64(c: &mut [f64], m: usize, n: usize, k: usize, a: &[f64], (a_rs, a_cs): (usize, usize), b: &[f64], (b_rs, b_cs): (usize, usize)) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    let parallelism = if m * n * k >= 1 << 18 { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the caller's promise; `c` is exclusively borrowed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Σ a(i, i) of an n×n matrix.
pub fn trace(a: &[f64], n: usize) -> f64 {
    (0..n).map(|i| a[i * n + i]).sum()
}

/// ‖a‖_F.
pub fn frobenius(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The n×n identity.
pub fn eye(n: usize) -> Vec<f64> {
    let mut e = vec![0.0; n * n];
    for i in 0..n {
        e[i * n + i] = 1.0;
    }
    e
}

/// a + eps·I (n×n).
pub fn add_diag(a: &[f64], n: usize, eps: f64) -> Vec<f64> {
    let mut out = a.to_vec();
    for i in 0..n {
        out[i * n + i] += eps;
    }
    out
}

/// `c` [cols, cols] = xᵀ·x for row-major x [rows, cols] (overwritten).
pub fn matmul_tn_f64(x: &[f64], rows: usize, cols: usize, c: &mut [f64]) {
    assert!(
        x.len() >= rows * cols && c.len() >= cols * cols,
        "matmul_tn_f64: operand sizes"
    );
    // SAFETY: xᵀ is x with swapped strides, inside x by the assert.
    unsafe { gemm_f64(c, cols, cols, rows, x, (1, cols), x, (cols, 1)) }
}
