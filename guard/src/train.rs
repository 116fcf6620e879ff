//! Training the embedded guard's heads (built with the `train` feature): standardized features, L2-regularised
//! logistic regression (P(unsafe)) and softmax regression (the category given unsafe), fitted
//! by full-batch Adam. Pure and deterministic: the same rows and seed give the same head.

use crate::embedded::{CategoryHead, LinearHead, Standardizer};
#[cfg(test)]
use crate::measure::metrics;
use crate::measure::softmax_in_place;

/// Mean and standard deviation per feature (a floor keeps constant features harmless).
pub fn fit_standardizer(rows: &[&[f32]]) -> Standardizer {
    let d = rows.first().map_or(0, |r| r.len());
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; d];
    for r in rows {
        for (m, &v) in mean.iter_mut().zip(r.iter()) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for r in rows {
        for ((s, &v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
            *s += (v as f64 - m).powi(2);
        }
    }
    Standardizer {
        mean: mean.iter().map(|&m| m as f32).collect(),
        scale: var
            .iter()
            .map(|&s| ((s / n).sqrt() as f32).max(1e-6))
            .collect(),
    }
}

/// Adam over full batches; `grad` fills the gradient of the loss at the parameters.
fn adam(params: &mut [f64], steps: usize, lr: f64, mut grad: impl FnMut(&[f64], &mut [f64])) {
    let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
    let mut m = vec![0f64; params.len()];
    let mut v = vec![0f64; params.len()];
    let mut g = vec![0f64; params.len()];
    for t in 1..=steps {
        grad(params, &mut g);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for i in 0..params.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            params[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Logistic regression on standardized rows; classes weighted to balance; `l2` on weights.
/// The seed sets the (small, random) starting weights.
pub fn fit_logistic(
    x: &[Vec<f32>],
    y: &[bool],
    l2: f64,
    steps: usize,
    seed: u64,
) -> (Vec<f32>, f32) {
    let d = x.first().map_or(0, Vec::len);
    let n = x.len() as f64;
    let pos = y.iter().filter(|&&v| v).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let (wp, wn) = (n / (2.0 * pos), n / (2.0 * neg));
    let mut rng = SplitMix(seed);
    let mut params: Vec<f64> = (0..=d).map(|_| (rng.unit() - 0.5) * 1e-3).collect();
    adam(&mut params, steps, 0.01, |p, g| {
        g.iter_mut().for_each(|v| *v = 0.0);
        for (row, &label) in x.iter().zip(y) {
            let z = p[d] + row.iter().zip(p).map(|(&a, &w)| a as f64 * w).sum::<f64>();
            let err = (sigmoid(z) - f64::from(u8::from(label))) * if label { wp } else { wn };
            for (gi, &a) in g.iter_mut().zip(row) {
                *gi += err * a as f64;
            }
            g[d] += err;
        }
        for (i, gi) in g.iter_mut().enumerate() {
            *gi /= n;
            if i < d {
                *gi += l2 * p[i];
            }
        }
    });
    let bias = params[d] as f32;
    (params[..d].iter().map(|&w| w as f32).collect(), bias)
}

/// Softmax regression over `classes` on standardized rows (labels are class indices).
pub fn fit_softmax(
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
    l2: f64,
    steps: usize,
    seed: u64,
) -> (Vec<Vec<f32>>, Vec<f32>) {
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().max(1) as f64;
    let stride = d + 1;
    let mut rng = SplitMix(seed);
    let mut params: Vec<f64> = (0..classes * stride)
        .map(|_| (rng.unit() - 0.5) * 1e-3)
        .collect();
    let mut probs = vec![0f64; classes];
    adam(&mut params, steps, 0.01, |p, g| {
        g.iter_mut().for_each(|v| *v = 0.0);
        for (row, &label) in x.iter().zip(y) {
            for (c, pr) in probs.iter_mut().enumerate() {
                let w = &p[c * stride..(c + 1) * stride];
                *pr = w[d] + row.iter().zip(w).map(|(&a, &w)| a as f64 * w).sum::<f64>();
            }
            softmax_in_place(&mut probs);
            for (c, &pr) in probs.iter().enumerate() {
                let err = pr - f64::from(u8::from(c == label));
                let gc = &mut g[c * stride..(c + 1) * stride];
                for (gi, &a) in gc.iter_mut().zip(row) {
                    *gi += err * a as f64;
                }
                gc[d] += err;
            }
        }
        for (i, gi) in g.iter_mut().enumerate() {
            *gi /= n;
            if i % stride != d {
                *gi += l2 * p[i];
            }
        }
    });
    let weights = (0..classes)
        .map(|c| {
            params[c * stride..c * stride + d]
                .iter()
                .map(|&w| w as f32)
                .collect()
        })
        .collect();
    let bias = (0..classes)
        .map(|c| params[c * stride + d] as f32)
        .collect();
    (weights, bias)
}

/// A deterministic generator for starting weights (no dependency, same numbers everywhere).
struct SplitMix(u64);

impl SplitMix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A fitted binary head from standardized training rows.
pub fn linear_head(
    standardizer: Standardizer,
    (weights, bias): (Vec<f32>, f32),
    threshold: f64,
) -> LinearHead {
    LinearHead {
        standardizer,
        weights,
        bias,
        threshold,
    }
}

pub fn category_head(
    standardizer: Standardizer,
    codes: Vec<String>,
    (weights, bias): (Vec<Vec<f32>>, Vec<f32>),
) -> CategoryHead {
    CategoryHead {
        standardizer,
        codes,
        weights,
        bias,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_regression_separates_a_separable_set() {
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![i as f32 / 40.0 - 0.5, ((i * 7) % 5) as f32 / 5.0])
            .collect();
        let y: Vec<bool> = (0..40).map(|i| i >= 20).collect();
        let (w, b) = fit_logistic(&x, &y, 1e-4, 500, 1);
        let scores: Vec<f64> = x
            .iter()
            .map(|r| sigmoid(b as f64 + r.iter().zip(&w).map(|(a, w)| (a * w) as f64).sum::<f64>()))
            .collect();
        let m = metrics(&scores, &y, 0.5);
        assert_eq!(m.f1, 1.0, "{m:?}");
        assert!(w[0] > 1.0 && w[0] > 10.0 * w[1].abs(), "{w:?}");
        // Deterministic: the same seed gives the same weights.
        assert_eq!(fit_logistic(&x, &y, 1e-4, 500, 1).0, w);
    }

    #[test]
    fn softmax_regression_learns_three_classes() {
        let x: Vec<Vec<f32>> = (0..60)
            .map(|i| {
                let c = i % 3;
                vec![
                    (c == 0) as u8 as f32,
                    (c == 1) as u8 as f32,
                    (i % 7) as f32 / 7.0,
                ]
            })
            .collect();
        let y: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let (w, b) = fit_softmax(&x, &y, 3, 1e-4, 400, 3);
        for (row, &label) in x.iter().zip(&y) {
            let mut z: Vec<f64> = (0..3)
                .map(|c| {
                    b[c] as f64
                        + row
                            .iter()
                            .zip(&w[c])
                            .map(|(a, w)| (a * w) as f64)
                            .sum::<f64>()
                })
                .collect();
            softmax_in_place(&mut z);
            let best = (0..3).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
            assert_eq!(best, label);
        }
    }
}
