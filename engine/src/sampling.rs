//! Choosing the next token from logits: greedy, temperature, top-k, top-p, the repetition,
//! frequency and presence penalties, logit bias, and structured output (a grammar the reply
//! must follow), reproducible under a seed. Pure functions over slices; no I/O.

use safegate_structured::Constraint;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no top-k cut.
    pub top_k: usize,
    /// 1.0 means no nucleus cut.
    pub top_p: f32,
    /// 1.0 means no penalty (the Hugging Face convention: >1 discourages repeats).
    pub repetition_penalty: f32,
    /// OpenAI's: subtracted once per time a token has been generated in this reply.
    #[serde(default)]
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted once from every token generated in this reply so far.
    #[serde(default)]
    pub presence_penalty: f32,
    /// Added to these tokens' logits (OpenAI's `logit_bias`; -100 bans, 100 forces).
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad(format!(
                "temperature must be in 0..=100, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty must be positive, got {}",
                self.repetition_penalty
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in -2..=2, got {v}"));
            }
        }
        if let Some((id, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !(-100.0..=100.0).contains(b))
        {
            return bad(format!(
                "logit_bias values must be in -100..=100, got {b} for token {id}"
            ));
        }
        Ok(())
    }
}

/// Index of the largest value; the first one on ties (as numpy's argmax). NaN is never
/// chosen. Written as a lane-wise maximum the compiler vectorises, then a search for the
/// first index holding it: on a 128k vocabulary this is a few tens of microseconds.
pub fn argmax(logits: &[f32]) -> u32 {
    const BLOCK: usize = 1024;
    let (mut best_block, mut best) = (0, f32::NEG_INFINITY);
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let m = block_max(block);
        if m > best {
            best = m;
            best_block = b;
        }
    }
    let start = best_block * BLOCK;
    let end = (start + BLOCK).min(logits.len());
    logits[start..end]
        .iter()
        .position(|&v| v == best)
        .map_or(0, |p| (start + p) as u32)
}

/// Maximum ignoring NaN, as sixteen independent lanes the compiler turns into vector code.
fn block_max(block: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = block.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    max
}

/// Hugging Face's repetition penalty: divide positive logits of seen tokens, multiply negative.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &id in seen {
        if let Some(v) = logits.get_mut(id as usize) {
            if done.insert(id) {
                *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
            }
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    candidates: Vec<(f32, u32)>,
    scratch: Vec<f32>,
    /// How often each token has been generated in this reply (frequency and presence
    /// penalties).
    generated: std::collections::HashMap<u32, u32>,
    constraint: Option<Constraint>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed),
            None => ChaCha8Rng::from_os_rng(),
        };
        Self {
            params,
            rng,
            candidates: Vec::new(),
            scratch: Vec::new(),
            generated: std::collections::HashMap::new(),
            constraint: None,
        }
    }

    /// Holds the reply to a grammar: only tokens that keep it on the grammar are chosen, and
    /// an end-of-sequence token only where the reply may end.
    pub fn with_constraint(mut self, constraint: Constraint) -> Self {
        self.constraint = Some(constraint);
        self
    }

    fn adjusts(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0
            || p.frequency_penalty != 0.0
            || p.presence_penalty != 0.0
            || !p.logit_bias.is_empty()
    }

    /// Penalties and bias, in place.
    fn adjust(&self, logits: &mut [f32], seen: &[u32]) {
        let p = &self.params;
        apply_repetition_penalty(logits, seen, p.repetition_penalty);
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&id, &n) in &self.generated {
                if let Some(v) = logits.get_mut(id as usize) {
                    *v -= n as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        for &(id, bias) in &p.logit_bias {
            if let Some(v) = logits.get_mut(id as usize) {
                *v += bias;
            }
        }
    }

    /// Picks the next token from `logits` (left untouched; a copy is made only when
    /// penalties, bias or the grammar have to change it). `seen`: the prompt and the reply
    /// so far (the repetition penalty's window).
    pub fn sample(&mut self, logits: &[f32], seen: &[u32]) -> u32 {
        let mut work = std::mem::take(&mut self.scratch);
        let adjusted = self.adjusts();
        if adjusted {
            work.clear();
            work.extend_from_slice(logits);
            self.adjust(&mut work, seen);
        }
        let mut id = self.sample_unpenalised(if adjusted { &work } else { logits });
        if let Some(c) = &self.constraint {
            if !c.allows(id) {
                // The likeliest choice breaks the grammar: choose again among the tokens that
                // keep to it (drawing from the candidates that fit is drawing from the
                // distribution restricted to them).
                if !adjusted {
                    work.clear();
                    work.extend_from_slice(logits);
                }
                id = if c.mask(&mut work) == 0 {
                    // Nothing fits (a grammar that cannot be finished within its bounds):
                    // end the reply rather than break it.
                    c.end_token().unwrap_or(id)
                } else {
                    self.sample_unpenalised(&work)
                };
            }
        }
        if let Some(c) = &mut self.constraint {
            c.advance(id);
        }
        if self.params.frequency_penalty != 0.0 || self.params.presence_penalty != 0.0 {
            *self.generated.entry(id).or_default() += 1;
        }
        self.scratch = work;
        id
    }

    fn sample_unpenalised(&mut self, logits: &[f32]) -> u32 {
        // Below this, sampling is greedy in all but name (logits 0.01 apart already differ by
        // e^100 in probability), and 1/t would overflow f32 (NaN scores): greedy it is.
        const GREEDY_BELOW: f32 = 1e-4;
        if self.params.temperature < GREEDY_BELOW {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &v)| (v * inv_t, i as u32)),
        );
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let k = self.params.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, desc);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(desc);
        let max = self.candidates[0].0;
        let mut total = 0.0f64;
        for c in self.candidates.iter_mut() {
            c.0 = (c.0 - max).exp();
            total += c.0 as f64;
        }
        if self.params.top_p < 1.0 {
            let mut mass = 0.0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                mass += c.0 as f64 / total;
                if mass >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep);
            total = self.candidates.iter().map(|c| c.0 as f64).sum();
        }
        let mut r = self.rng.random::<f64>() * total;
        for c in &self.candidates {
            r -= c.0 as f64;
            if r <= 0.0 {
                return c.1;
            }
        }
        self.candidates.last().map(|c| c.1).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32, k: usize, p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: t,
            top_k: k,
            top_p: p,
            seed: Some(seed),
            ..Default::default()
        }
    }

    #[test]
    fn tiny_temperatures_are_greedy_not_nan() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        for t in [1e-45, 1e-30, 1e-6] {
            let mut s = Sampler::new(params(t, 0, 1.0, 7));
            for _ in 0..20 {
                assert_eq!(s.sample(&logits, &[]), 1, "temperature {t}");
            }
        }
    }

    #[test]
    fn greedy_takes_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.0, 0.5, 0.2], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(params(1.5, 1, 1.0, 9));
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.3, 0.1, 2.0, 1.9], &[]), 2);
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps only the first two.
        let mut s = Sampler::new(params(1.0, 0, 0.7, 1));
        for _ in 0..200 {
            let id = s.sample(&[3.0, 2.0, 1.0, 0.0], &[]);
            assert!(id <= 1, "sampled {id}");
        }
    }

    #[test]
    fn same_seed_same_tokens_and_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 0, 1.0, seed));
            (0..40).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn argmax_handles_remainders_ties_and_nan() {
        let mut v: Vec<f32> = (0..37).map(|i| (i % 5) as f32).collect();
        assert_eq!(argmax(&v), 4);
        v[35] = 9.0;
        assert_eq!(argmax(&v), 35);
        v[3] = f32::NAN;
        assert_eq!(argmax(&v), 35);
        assert_eq!(argmax(&[f32::NEG_INFINITY, 1.0]), 1);
        let mut big = vec![0.0f32; 5000];
        big[4999] = 1.0;
        big[1500] = 1.0;
        assert_eq!(argmax(&big), 1500);
    }

    #[test]
    fn penalty_applies_through_sample() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 4.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[2.0, 1.0], &[0]), 1);
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut l = vec![2.0, 1.9, -1.0];
        apply_repetition_penalty(&mut l, &[0, 0, 2], 2.0);
        assert_eq!(l, vec![1.0, 1.9, -2.0]);
        assert_eq!(argmax(&l), 1);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(params(-1.0, 0, 1.0, 0).validate().is_err());
        assert!(params(1.0, 0, 0.0, 0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0, 0).validate().is_err());
        assert!(params(0.7, 40, 0.9, 0).validate().is_ok());
    }
}
