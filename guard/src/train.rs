//! Training and measuring the embedded guard's heads: standardized features, L2-regularised
//! logistic regression (P(unsafe)) and softmax regression (the category given unsafe), fitted
//! by full-batch Adam. Pure and deterministic: the same rows and seed give the same head.

use crate::embedded::{CategoryHead, LinearHead, Standardizer};

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

pub(crate) fn softmax_in_place(v: &mut [f64]) {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut total = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        total += *x;
    }
    v.iter_mut().for_each(|x| *x /= total);
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

/// Binary metrics at a threshold, and the threshold-free AUPRC.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Metrics {
    pub n: usize,
    pub positives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// False positive rate: flagged benign rows over benign rows.
    pub fpr: f64,
    /// Area under the precision-recall curve (average precision).
    pub auprc: f64,
}

pub fn metrics(scores: &[f64], labels: &[bool], threshold: f64) -> Metrics {
    let mut tp = 0usize;
    let mut fp = 0usize;
    let mut fneg = 0usize;
    let mut tn = 0usize;
    for (&s, &l) in scores.iter().zip(labels) {
        match (s >= threshold, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            (false, false) => tn += 1,
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let precision = ratio(tp, tp + fp);
    let recall = ratio(tp, tp + fneg);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Metrics {
        n: scores.len(),
        positives: tp + fneg,
        precision,
        recall,
        f1,
        fpr: ratio(fp, fp + tn),
        auprc: average_precision(scores, labels),
    }
}

/// Average precision: the mean of the precision at each positive, scores descending
/// (ties broken pessimistically: negatives first).
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        scores[b]
            .total_cmp(&scores[a])
            .then(labels[a].cmp(&labels[b]))
    });
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return 0.0;
    }
    let mut tp = 0usize;
    let mut sum = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1;
            sum += tp as f64 / (rank + 1) as f64;
        }
    }
    sum / positives as f64
}

/// The threshold with the best F1 among those whose false positive rate is at most
/// `max_fpr` (on the rows given: the validation split, never the test split).
///
/// The false positive rate is the mean of each benign source's own rate (`groups[i]` names
/// row i's source): pooled over all benign rows, a large source of easy negatives would
/// dilute the rate of a small hard one and let the threshold drop until the hard one is
/// mostly flagged.
pub fn choose_threshold(scores: &[f64], labels: &[bool], groups: &[usize], max_fpr: f64) -> f64 {
    let mut candidates: Vec<f64> = scores.to_vec();
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let mut best = (f64::NEG_INFINITY, 0.5);
    for &t in &candidates {
        let m = metrics(scores, labels, t);
        if macro_fpr(scores, labels, groups, t) <= max_fpr && m.f1 > best.0 {
            best = (m.f1, t);
        }
    }
    best.1
}

/// Benign groups smaller than this are counted together as one group: a rate over three
/// rows says little.
const MIN_GROUP: usize = 10;

/// The mean over benign groups of each group's false positive rate at `threshold`.
pub fn macro_fpr(scores: &[f64], labels: &[bool], groups: &[usize], threshold: f64) -> f64 {
    let mut sizes: std::collections::BTreeMap<usize, usize> = Default::default();
    for (&l, &g) in labels.iter().zip(groups) {
        if !l {
            *sizes.entry(g).or_default() += 1;
        }
    }
    let mut per_group: std::collections::BTreeMap<Option<usize>, (usize, usize)> =
        Default::default();
    for ((&s, &l), &g) in scores.iter().zip(labels).zip(groups) {
        if !l {
            let key = (sizes[&g] >= MIN_GROUP).then_some(g);
            let e = per_group.entry(key).or_default();
            e.0 += usize::from(s >= threshold);
            e.1 += 1;
        }
    }
    if per_group.is_empty() {
        return 0.0;
    }
    per_group
        .values()
        .map(|&(fp, n)| fp as f64 / n as f64)
        .sum::<f64>()
        / per_group.len() as f64
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

    #[test]
    fn metrics_and_average_precision_by_hand() {
        let scores = [0.9, 0.8, 0.7, 0.2];
        let labels = [true, false, true, false];
        let m = metrics(&scores, &labels, 0.5);
        assert_eq!((m.precision, m.recall, m.fpr), (2.0 / 3.0, 1.0, 0.5));
        // Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
        assert!((m.auprc - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // With at most 0% false positives the best threshold flags only the top row.
        assert_eq!(choose_threshold(&scores, &labels, &[0; 4], 0.0), 0.9);
    }

    #[test]
    fn false_positive_budget_is_per_benign_source() {
        // Unsafe rows at 0.9 and 0.55; benign source 1: 90 easy rows; source 2: ten hard
        // rows, one scored 0.6.
        let mut scores = vec![0.9, 0.6, 0.55];
        let mut labels = vec![true, false, true];
        let mut groups = vec![0, 2, 0];
        for i in 0..99 {
            scores.push(0.1);
            labels.push(false);
            groups.push(if i < 90 { 1 } else { 2 });
        }
        // Pooled, flagging the hard row is a 1% rate; per source it is (0 + 10%) / 2.
        assert!((macro_fpr(&scores, &labels, &groups, 0.5) - 0.05).abs() < 1e-12);
        assert!((metrics(&scores, &labels, 0.5).fpr - 0.01).abs() < 1e-12);
        assert_eq!(choose_threshold(&scores, &labels, &groups, 0.03), 0.9);
        // One source for all: the pooled rate allows 0.55 (better F1: both unsafe rows).
        assert_eq!(choose_threshold(&scores, &labels, &[0; 102], 0.03), 0.55);
        // Sources under ten rows count as one group: ten benign rows, one flagged.
        let small = [0, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert!((macro_fpr(&scores[..12], &labels[..12], &small, 0.5) - 0.1).abs() < 1e-12);
    }
}
