//! Sample-quality metrics on feature sets, in f64: Fréchet distance, KID and k-NN precision/recall. Features are
//! rows of a row-major `n × d` slice.
use crate::error::{Error, Result};

/// Mean and (unbiased) covariance of `n × d` features.
fn moments(x: &[f64], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mu = vec![0.0; d];
    for row in x.chunks(d) {
        mu.iter_mut().zip(row).for_each(|(m, v)| *m += v / n as f64);
    }
    let mut cov = vec![0.0; d * d];
    for row in x.chunks(d) {
        for i in 0..d {
            let a = row[i] - mu[i];
            for j in i..d {
                cov[i * d + j] += a * (row[j] - mu[j]);
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / (n as f64 - 1.0);
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mu, cov)
}

/// Eigenvalues and eigenvectors (columns of `v`) of a symmetric `d × d` matrix, by cyclic Jacobi rotations.
fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    (0..d).for_each(|i| v[i * d + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..d).flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| a[i * d + j].powi(2)).sum();
        let scale: f64 = (0..d).map(|i| a[i * d + i].powi(2)).sum::<f64>().max(1e-300);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut c = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            for j in 0..d {
                c[i * d + j] += aik * b[k * d + j];
            }
        }
    }
    c
}

/// Fréchet distance `|μ1−μ2|² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2})` between two feature sets. The trace of the square
/// root is Σ√λ over the eigenvalues of the symmetric PSD matrix Σ1^{1/2} Σ2 Σ1^{1/2}, which shares them with Σ1Σ2.
pub fn frechet_distance(x: &[f64], y: &[f64], d: usize) -> f64 {
    let (nx, ny) = (x.len() / d, y.len() / d);
    let (mu1, s1) = moments(x, nx, d);
    let (mu2, s2) = moments(y, ny, d);
    let (w, v) = symmetric_eigen(&s1, d);
    // Σ1^{1/2} = V diag(√w) Vᵀ
    let mut root = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            root[i * d + j] = (0..d).map(|k| v[i * d + k] * w[k].max(0.0).sqrt() * v[j * d + k]).sum();
        }
    }
    let m = matmul(&matmul(&root, &s2, d), &root, d);
    let sym: Vec<f64> = (0..d * d).map(|k| 0.5 * (m[k] + m[(k % d) * d + k / d])).collect();
    let (ev, _) = symmetric_eigen(&sym, d);
    let tr_sqrt: f64 = ev.iter().map(|l| l.max(0.0).sqrt()).sum();
    let mean_term: f64 = mu1.iter().zip(&mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    mean_term + trace(&s1) + trace(&s2) - 2.0 * tr_sqrt
}

/// `a · bᵀ` for row sets a (n × d) and b (m × d): the n × m matrix of dot products, rows in parallel.
fn gram(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let m = b.len() / d;
    let mut out = vec![0.0; (a.len() / d) * m];
    out.par_chunks_mut(m.max(1)).zip(a.par_chunks(d)).for_each(|(row, x)| {
        for (o, y) in row.iter_mut().zip(b.chunks(d)) {
            *o = x.iter().zip(y).map(|(p, q)| p * q).sum();
        }
    });
    out
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
    let g = Grams::new(real, generated, d);
    let (kid, kid_std) = kid_from(&g, d, subsets, subset_size, 0);
    let (precision, recall) = precision_recall_from(&g, k);
    Ok(Report { fd: frechet_distance(real, generated, d), kid, kid_std, precision, recall })
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
        let (mut w, _) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        w.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert!((w[0] - 1.0).abs() < 1e-12 && (w[1] - 3.0).abs() < 1e-12);
    }

    #[test]
    fn fd_of_a_set_with_itself_is_zero_and_order_free() {
        let x = gaussian(500, 6, &[0.0; 6], &[1.0, 2.0, 0.5, 1.0, 1.0, 3.0], 1);
        assert!(frechet_distance(&x, &x, 6).abs() < 1e-8);
        let rev: Vec<f64> = x.chunks(6).rev().flatten().copied().collect();
        let y = gaussian(400, 6, &[0.5; 6], &[1.0; 6], 2);
        let a = frechet_distance(&x, &y, 6);
        let b = frechet_distance(&rev, &y, 6);
        assert!((a - b).abs() < 1e-9 * a.abs().max(1.0));
    }

    #[test]
    fn fd_matches_the_closed_form_for_diagonal_gaussians() {
        // For diagonal Σ: |μ1−μ2|² + Σ (σ1 − σ2)².
        let (m1, s1) = ([0.0, 1.0, -1.0], [1.0, 2.0, 0.5]);
        let (m2, s2) = ([0.5, 1.0, 0.0], [2.0, 1.0, 0.5]);
        let x = gaussian(200_000, 3, &m1, &s1, 3);
        let y = gaussian(200_000, 3, &m2, &s2, 4);
        let closed: f64 = (0..3).map(|i| (m1[i] - m2[i]).powi(2) + (s1[i] - s2[i]).powi(2)).sum();
        let fd = frechet_distance(&x, &y, 3);
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
        assert_eq!(r.fd, frechet_distance(&a, &b, 3));
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
