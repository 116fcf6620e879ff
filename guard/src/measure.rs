//! Measuring the embedded guard: binary metrics at a threshold, average precision, and the
//! threshold that keeps each benign source's false positive rate within a budget. Pure.
//! (Fitting the heads is `train`, built with the `train` feature.)

/// Probabilities from logits, in place.
pub(crate) fn softmax_in_place(v: &mut [f64]) {
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut total = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        total += *x;
    }
    v.iter_mut().for_each(|x| *x /= total);
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
/// `max_fpr` (on the rows given: the validation split, never the test split), taken as the
/// middle (the median) of the thresholds whose F1 is within [`F1_TIE`] of the best.
///
/// F1 is flat near its peak, so its single best point jumps with a few validation rows:
/// adding 163 rows to 17,000 moved the prompt head's from 0.785 to 0.842, across a band
/// (0.725 to 0.866) where validation F1 varies by less than half a point and the held-out
/// rates by several. The middle of the band moves little with the rows and leans neither
/// to catching nor to letting through.
///
/// The false positive rate is the mean of each benign source's own rate (`groups[i]` names
/// row i's source): pooled over all benign rows, a large source of easy negatives would
/// dilute the rate of a small hard one and let the threshold drop until the hard one is
/// mostly flagged.
pub fn choose_threshold(scores: &[f64], labels: &[bool], groups: &[usize], max_fpr: f64) -> f64 {
    let mut candidates: Vec<f64> = scores.to_vec();
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let allowed: Vec<(f64, f64)> = candidates
        .iter()
        .filter(|&&t| macro_fpr(scores, labels, groups, t) <= max_fpr)
        .map(|&t| (metrics(scores, labels, t).f1, t))
        .collect();
    let best = allowed
        .iter()
        .map(|a| a.0)
        .fold(f64::NEG_INFINITY, f64::max);
    let band: Vec<f64> = allowed
        .iter()
        .filter(|(f1, _)| *f1 >= best - F1_TIE)
        .map(|a| a.1)
        .collect();
    band.get(band.len() / 2).copied().unwrap_or(0.5)
}

/// F1 differences on validation smaller than this are ties (see [`choose_threshold`]).
pub const F1_TIE: f64 = 0.005;

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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_middle_of_the_thresholds_validation_cannot_tell_apart_is_chosen() {
        // 100 unsafe rows at 0.6..0.99 and 900 benign ones at 0.0..0.89: the F1 peak is one
        // point of a band of near-equal thresholds; the band's median is chosen.
        let mut scores: Vec<f64> = (0..100).map(|i| 0.6 + 0.39 * i as f64 / 99.0).collect();
        let mut labels = vec![true; 100];
        scores.extend((0..900).map(|i| 0.89 * i as f64 / 899.0));
        labels.extend(vec![false; 900]);
        let groups = vec![0; 1000];
        let chosen = choose_threshold(&scores, &labels, &groups, 1.0);
        let f1 = |t: f64| metrics(&scores, &labels, t).f1;
        let mut candidates = scores.clone();
        candidates.sort_by(f64::total_cmp);
        let peak = candidates
            .iter()
            .map(|&t| f1(t))
            .fold(f64::NEG_INFINITY, f64::max);
        let band: Vec<f64> = candidates
            .into_iter()
            .filter(|&t| f1(t) >= peak - F1_TIE)
            .collect();
        assert!(band.len() > 2, "a band, not a point");
        assert!(f1(chosen) < peak, "not the peak itself");
        let below = band.iter().filter(|&&t| t < chosen).count();
        let above = band.iter().filter(|&&t| t > chosen).count();
        assert!(below.abs_diff(above) <= 1, "{below} below, {above} above");
    }
}
