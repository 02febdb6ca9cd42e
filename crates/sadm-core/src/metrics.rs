//! Sample-quality metrics on feature sets, in f64: Fréchet distance, KID and k-NN precision/recall. Features are
//! rows of a row-major `n × d` slice. The dense linear algebra (covariances, Gram matrices, symmetric
//! eigenvalues) is faer's: blocked and multi-threaded, so Inception's 2048-d features take a second, not hours.
use crate::error::{Error, Result};
use faer::{Mat, MatRef, Side};

fn rows(x: &[f64], d: usize) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(x, x.len() / d, d)
}

/// Mean and (unbiased) covariance of `n × d` features.
fn moments(x: &[f64], d: usize) -> (Vec<f64>, Mat<f64>) {
    let x = rows(x, d);
    let n = x.nrows();
    let mu: Vec<f64> = (0..d).map(|j| x.col(j).iter().sum::<f64>() / n as f64).collect();
    let centred = Mat::from_fn(n, d, |i, j| x[(i, j)] - mu[j]);
    let cov = centred.transpose() * &centred * faer::Scale(1.0 / (n as f64 - 1.0));
    (mu, cov)
}

/// Eigenvalues of a symmetric matrix (its lower triangle is read).
fn eigenvalues(a: MatRef<'_, f64>) -> Result<Vec<f64>> {
    a.self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::Numerical(format!("the eigenvalue solver did not converge on a {0}×{0} matrix ({e:?})", a.nrows())))
}

/// Fréchet distance `|μ1−μ2|² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2})` between two feature sets. The trace of the square
/// root is Σ√λ over the eigenvalues of the symmetric PSD matrix Σ1^{1/2} Σ2 Σ1^{1/2}, which shares them with Σ1Σ2.
pub fn frechet_distance(x: &[f64], y: &[f64], d: usize) -> Result<f64> {
    let (mu1, s1) = moments(x, d);
    let (mu2, s2) = moments(y, d);
    let eig = s1
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Numerical(format!("the eigensolver did not converge on a {d}×{d} covariance ({e:?})")))?;
    let (u, w) = (eig.U(), eig.S().column_vector());
    // Σ1^{1/2} = U diag(√w) Uᵀ; rounding can leave tiny negative eigenvalues of a PSD matrix, hence the clamp.
    let u_root = Mat::from_fn(d, d, |i, k| u[(i, k)] * w[k].max(0.0).sqrt());
    let root = &u_root * u.transpose();
    let m = &root * &s2 * &root;
    let tr_sqrt: f64 = eigenvalues(m.as_ref())?.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean_term: f64 = mu1.iter().zip(&mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let trace = |s: &Mat<f64>| (0..d).map(|i| s[(i, i)]).sum::<f64>();
    Ok(mean_term + trace(&s1) + trace(&s2) - 2.0 * tr_sqrt)
}

/// `a · bᵀ` for row sets a (n × d) and b (m × d): the n × m matrix of dot products, row-major.
fn gram(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let g = rows(a, d) * rows(b, d).transpose();
    let (n, m) = (g.nrows(), g.ncols());
    (0..n * m).map(|k| g[(k / m, k % m)]).collect()
}

/// The three Gram matrices of two feature sets, computed once and shared by KID and precision/recall.
struct Grams {
    nx: usize,
    ny: usize,
    xx: Vec<f64>,
    yy: Vec<f64>,
    xy: Vec<f64>,
}

impl Grams {
    fn new(x: &[f64], y: &[f64], d: usize) -> Self {
        Self { nx: x.len() / d, ny: y.len() / d, xx: gram(x, x, d), yy: gram(y, y, d), xy: gram(x, y, d) }
    }

    /// Unbiased MMD² over the rows `xi` of x and `yi` of y, with `k(a, b) = (a·b/d + 1)³`.
    fn mmd2(&self, xi: &[usize], yi: &[usize], d: usize) -> f64 {
        let k = |dot: f64| (dot / d as f64 + 1.0).powi(3);
        let within = |g: &[f64], n: usize, idx: &[usize]| -> f64 {
            let mut t = 0.0;
            for (a, &i) in idx.iter().enumerate() {
                for &j in &idx[a + 1..] {
                    t += 2.0 * k(g[i * n + j]);
                }
            }
            t / (idx.len() as f64 * (idx.len() as f64 - 1.0))
        };
        let cross: f64 = xi.iter().map(|&i| yi.iter().map(|&j| k(self.xy[i * self.ny + j])).sum::<f64>()).sum();
        within(&self.xx, self.nx, xi) + within(&self.yy, self.ny, yi) - 2.0 * cross / (xi.len() * yi.len()) as f64
    }
}

/// Unbiased MMD² between two feature sets with the cubic polynomial kernel `k(a, b) = (a·b/d + 1)³`.
pub fn mmd2_unbiased(x: &[f64], y: &[f64], d: usize) -> f64 {
    let g = Grams::new(x, y, d);
    g.mmd2(&(0..g.nx).collect::<Vec<_>>(), &(0..g.ny).collect::<Vec<_>>(), d)
}

fn kid_from(g: &Grams, d: usize, subsets: usize, subset_size: usize, seed: u64) -> (f64, f64) {
    let m = subset_size.min(g.nx).min(g.ny);
    let mut rng = crate::rng::Rng::new(seed);
    let mut pick = |n: usize| -> Vec<usize> {
        // Partial Fisher–Yates: the first m of a random permutation.
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..m {
            let j = i + rng.below((n - i) as u32) as usize;
            idx.swap(i, j);
        }
        idx.truncate(m);
        idx
    };
    let vals: Vec<f64> = (0..subsets.max(1)).map(|_| {
        let (xi, yi) = (pick(g.nx), pick(g.ny));
        g.mmd2(&xi, &yi, d)
    }).collect();
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
    (mean, var.sqrt())
}

/// KID: the unbiased MMD² averaged over `subsets` random subsets of `subset_size` rows of each set (drawn with
/// the seeded generator, so the value is reproducible). Returns (mean, standard deviation over subsets).
pub fn kid(x: &[f64], y: &[f64], d: usize, subsets: usize, subset_size: usize, seed: u64) -> (f64, f64) {
    kid_from(&Grams::new(x, y, d), d, subsets, subset_size, seed)
}

/// Squared distance from each row to its k-th nearest other row of the same set, from that set's Gram matrix.
fn knn_radii(g: &[f64], n: usize, k: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let mut d: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| g[i * n + i] + g[j * n + j] - 2.0 * g[i * n + j]).collect();
            let k = k.min(d.len()).max(1) - 1;
            *d.select_nth_unstable_by(k, |p, q| p.total_cmp(q)).1
        })
        .collect()
}

fn precision_recall_from(g: &Grams, k: usize) -> (f64, f64) {
    let (rr, rg) = (knn_radii(&g.xx, g.nx, k), knn_radii(&g.yy, g.ny, k));
    let dist = |i: usize, j: usize| g.xx[i * g.nx + i] + g.yy[j * g.ny + j] - 2.0 * g.xy[i * g.ny + j];
    // Relative slack: distances from Gram entries carry rounding, and a point must stay inside its own ball.
    let inside = |dd: f64, r: f64| dd <= r + 1e-9 * r.abs().max(1.0);
    let precision = (0..g.ny).filter(|&j| (0..g.nx).any(|i| inside(dist(i, j), rr[i]))).count() as f64 / g.ny.max(1) as f64;
    let recall = (0..g.nx).filter(|&i| (0..g.ny).any(|j| inside(dist(i, j), rg[j]))).count() as f64 / g.nx.max(1) as f64;
    (precision, recall)
}

/// k-NN precision and recall (Kynkäänniemi et al., 2019): precision is the share of generated samples that fall
/// in the real manifold (the union of real k-NN balls), recall the share of real samples in the generated one.
pub fn precision_recall(real: &[f64], generated: &[f64], d: usize, k: usize) -> (f64, f64) {
    precision_recall_from(&Grams::new(real, generated, d), k)
}

/// KID and precision/recall share the three full Gram matrices; past this they would not fit a typical machine.
const MAX_GRAM_BYTES: usize = 6 << 30;

/// Every metric of two feature sets, sharing one set of Gram matrices.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub fd: f64,
    pub kid: f64,
    pub kid_std: f64,
    pub precision: f64,
    pub recall: f64,
}

/// FD, KID (`subsets` × `subset_size`, seeded) and k-NN precision/recall of `generated` against `real`, after
/// checking that both are at least k + 1 whole, finite rows of `d` values.
pub fn report(real: &[f64], generated: &[f64], d: usize, subsets: usize, subset_size: usize, k: usize) -> Result<Report> {
    for (name, x) in [("real", real), ("generated", generated)] {
        if d == 0 || x.len() % d != 0 || x.len() / d < (k + 1).max(4) {
            return Err(Error::Input(format!(
                "{name} features: {} values are not at least {} rows of {d}",
                x.len(),
                (k + 1).max(4)
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input(format!("{name} features contain a non-finite value")));
        }
    }
    let (nr, ng) = (real.len() / d, generated.len() / d);
    let gram_bytes = 8 * (nr * nr + ng * ng + nr * ng);
    if gram_bytes > MAX_GRAM_BYTES {
        return Err(Error::Input(format!(
            "{nr} real and {ng} generated images need {:.1} GB of Gram matrices for KID and precision/recall (at \
             most {} GB); evaluate with fewer samples (eval.samples ≤ 15000)",
            gram_bytes as f64 / 1e9,
            MAX_GRAM_BYTES >> 30
        )));
    }
    let g = Grams::new(real, generated, d);
    let (kid, kid_std) = kid_from(&g, d, subsets, subset_size, 0);
    let (precision, recall) = precision_recall_from(&g, k);
    Ok(Report { fd: frechet_distance(real, generated, d)?, kid, kid_std, precision, recall })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn gaussian(n: usize, d: usize, mean: &[f64], std: &[f64], seed: u64) -> Vec<f64> {
        let z = Rng::new(seed).normal_vec(n * d);
        z.chunks(d).flat_map(|r| r.iter().enumerate().map(|(j, &v)| mean[j] + std[j] * v as f64).collect::<Vec<_>>()).collect()
    }

    #[test]
    fn eigen_of_a_known_matrix() {
        let w = eigenvalues(rows(&[2.0, 1.0, 1.0, 2.0], 2)).unwrap();
        assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 3.0).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn fd_of_a_set_with_itself_is_zero_and_order_free() {
        let x = gaussian(500, 6, &[0.0; 6], &[1.0, 2.0, 0.5, 1.0, 1.0, 3.0], 1);
        assert!(frechet_distance(&x, &x, 6).unwrap().abs() < 1e-8);
        let rev: Vec<f64> = x.chunks(6).rev().flatten().copied().collect();
        let y = gaussian(400, 6, &[0.5; 6], &[1.0; 6], 2);
        let a = frechet_distance(&x, &y, 6).unwrap();
        let b = frechet_distance(&rev, &y, 6).unwrap();
        assert!((a - b).abs() < 1e-9 * a.abs().max(1.0));
    }

    #[test]
    fn fd_with_fewer_samples_than_dimensions_matches_the_sample_space_form() {
        // n < d, as with 500 samples of Inception's 2048-d features: both covariances are singular. With centred
        // rows A, B: Σ1 = AᵀA/(n1−1), Σ2 = BᵀB/(n2−1), and the eigenvalues of Σ1Σ2 are those of (ABᵀ)(ABᵀ)ᵀ
        // over (n1−1)(n2−1), so Tr (Σ1Σ2)^{1/2} is the nuclear norm of ABᵀ over √((n1−1)(n2−1)).
        let d = 64;
        let std: Vec<f64> = (0..d).map(|j| 0.5 + (j % 7) as f64 * 0.3).collect();
        let x = gaussian(40, d, &vec![0.0; d], &std, 21);
        let y = gaussian(30, d, &vec![0.2; d], &vec![1.0; d], 22);
        let centred = |x: &[f64]| {
            let m = rows(x, d);
            let mu: Vec<f64> = (0..d).map(|j| m.col(j).iter().sum::<f64>() / m.nrows() as f64).collect();
            Mat::from_fn(m.nrows(), d, |i, j| m[(i, j)] - mu[j])
        };
        let (a, b) = (centred(&x), centred(&y));
        let nuclear: f64 = (&a * b.transpose()).singular_values().unwrap().iter().sum();
        let tr_sqrt = nuclear / ((39.0 * 29.0) as f64).sqrt();
        let (mu1, s1) = moments(&x, d);
        let (mu2, s2) = moments(&y, d);
        let mean: f64 = mu1.iter().zip(&mu2).map(|(p, q)| (p - q).powi(2)).sum();
        let want = mean + (0..d).map(|i| s1[(i, i)] + s2[(i, i)]).sum::<f64>() - 2.0 * tr_sqrt;
        let fd = frechet_distance(&x, &y, d).unwrap();
        // The two forms sum ~10³ products in different orders, and FD is a difference of terms ~10× its size.
        assert!((fd - want).abs() < 1e-7 * want, "{fd} vs {want}");
        // The null space's eigenvalues are rounding noise (~1e-16) whose square roots (~1e-8) add up.
        let same = frechet_distance(&x, &x, d).unwrap();
        assert!(same.abs() < 1e-5 * (0..d).map(|i| s1[(i, i)]).sum::<f64>(), "{same}");
    }

    #[test]
    fn fd_matches_the_closed_form_for_diagonal_gaussians() {
        // For diagonal Σ: |μ1−μ2|² + Σ (σ1 − σ2)².
        let (m1, s1) = ([0.0, 1.0, -1.0], [1.0, 2.0, 0.5]);
        let (m2, s2) = ([0.5, 1.0, 0.0], [2.0, 1.0, 0.5]);
        let x = gaussian(200_000, 3, &m1, &s1, 3);
        let y = gaussian(200_000, 3, &m2, &s2, 4);
        let closed: f64 = (0..3).map(|i| (m1[i] - m2[i]).powi(2) + (s1[i] - s2[i]).powi(2)).sum();
        let fd = frechet_distance(&x, &y, 3).unwrap();
        assert!((fd - closed).abs() < 0.03 * closed, "{fd} vs {closed}");
    }

    #[test]
    fn mmd_known_value_and_kid_behaviour() {
        // d = 1, x = {0, 1}, y = {2}: within x: 2·k(0,1) = 2·1 → /2 = 1; y has one row, so use two: y = {2, 2}.
        // k(a,b) = (ab + 1)³: within y = 2·125/2 = 125; cross = k(0,2)+k(0,2)+k(1,2)+k(1,2) = 1+1+27+27 = 56 → /4.
        let v = mmd2_unbiased(&[0.0, 1.0], &[2.0, 2.0], 1);
        assert!((v - (1.0 + 125.0 - 2.0 * 14.0)).abs() < 1e-12, "{v}");
        let a = gaussian(400, 4, &[0.0; 4], &[1.0; 4], 5);
        let b = gaussian(400, 4, &[0.0; 4], &[1.0; 4], 6);
        let c = gaussian(400, 4, &[1.0; 4], &[1.0; 4], 7);
        let (same, _) = kid(&a, &b, 4, 10, 200, 0);
        let (shifted, _) = kid(&a, &c, 4, 10, 200, 0);
        assert!(same.abs() < 0.05, "{same}");
        assert!(shifted > 10.0 * same.abs().max(0.01), "{shifted} vs {same}");
        assert_eq!(kid(&a, &c, 4, 10, 200, 0), kid(&a, &c, 4, 10, 200, 0));
    }

    #[test]
    fn report_agrees_with_the_single_metrics() {
        let a = gaussian(120, 3, &[0.0; 3], &[1.0; 3], 11);
        let b = gaussian(100, 3, &[0.3; 3], &[1.0; 3], 12);
        let r = report(&a, &b, 3, 5, 50, 3).unwrap();
        assert!(report(&a, &b[..10], 3, 5, 50, 3).unwrap_err().to_string().contains("generated features: 10 values"));
        let mut nan = a.clone();
        nan[4] = f64::NAN;
        assert!(report(&nan, &b, 3, 5, 50, 3).unwrap_err().to_string().contains("real features contain a non-finite"));
        assert_eq!((r.kid, r.kid_std), kid(&a, &b, 3, 5, 50, 0));
        assert_eq!((r.precision, r.recall), precision_recall(&a, &b, 3, 3));
        assert_eq!(r.fd, frechet_distance(&a, &b, 3).unwrap());
    }

    #[test]
    fn precision_recall_behaviour() {
        let real = gaussian(300, 2, &[0.0, 0.0], &[1.0, 1.0], 8);
        assert_eq!(precision_recall(&real, &real, 2, 3), (1.0, 1.0));
        let far = gaussian(300, 2, &[100.0, 100.0], &[1.0, 1.0], 9);
        assert_eq!(precision_recall(&real, &far, 2, 3), (0.0, 0.0));
        // A collapsed generator (tight cluster at the mode): precise but covering little of the real set.
        let collapsed = gaussian(300, 2, &[0.0, 0.0], &[0.05, 0.05], 10);
        let (p, r) = precision_recall(&real, &collapsed, 2, 3);
        assert!(p > 0.95 && r < 0.2, "precision {p}, recall {r}");
    }
}
