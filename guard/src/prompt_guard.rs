//! Prompt Guard (Meta's prompt-attack classifier, v1 and Llama Prompt Guard 2) as the
//! prompt-attack stage's backend, when the user has its weights exported to ONNX.
//!
//! The model reads windows of at most 512 positions; a text's score is its worst window's.
//! What the score is depends on the labels (config.json's `id2label`):
//! - three labels, v1 (`BENIGN`, `INJECTION`, `JAILBREAK`): a direct turn (user, system,
//!   developer) scores P(JAILBREAK), an indirect one (a tool result, where third-party text
//!   arrives) P(INJECTION) + P(JAILBREAK). That is the model card's advice: v1 calls any
//!   instruction-like text an injection, which is only suspicious where no instruction
//!   should be;
//! - two labels, v2 and binary classifiers like it: P(not benign) for every turn. The benign
//!   label is the one named `BENIGN` or `SAFE`, else the first (v2 names them `LABEL_0`,
//!   `LABEL_1`).

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use safegate_engine::classifier::batches;
use safegate_engine::session::SessionOptions;
use safegate_engine::SequenceClassifier;

use crate::{GuardError, Until};

/// Where a text comes from, which decides what counts as an attack in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Written by the user or the application (user, system, developer turns).
    Direct,
    /// Third-party text the model will read (tool results, documents).
    Indirect,
}

impl Source {
    /// The source of a chat turn by its role.
    pub fn of_role(role: &str) -> Self {
        if role == "tool" {
            Source::Indirect
        } else {
            Source::Direct
        }
    }
}

/// Which probabilities make the attack score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scoring {
    /// The benign label's index: 1 - P(benign) is the score of indirect text (and of all
    /// text without a jailbreak label).
    pub benign: usize,
    /// The jailbreak label's index, when the model tells jailbreaks from injections.
    pub jailbreak: Option<usize>,
}

impl Scoring {
    /// The scoring for a model's labels; `None` when they cannot be read as attack/benign.
    pub fn from_labels(labels: &[String]) -> Option<Self> {
        let named = |names: &[&str]| {
            labels
                .iter()
                .position(|l| names.iter().any(|n| l.eq_ignore_ascii_case(n)))
        };
        let benign = named(&["BENIGN", "SAFE"]).or((labels.len() == 2).then_some(0))?;
        let jailbreak = if labels.len() > 2 {
            Some(named(&["JAILBREAK"])?)
        } else {
            None
        };
        Some(Self { benign, jailbreak })
    }

    /// The attack score of one window's probabilities.
    pub fn score(&self, probs: &[f32], source: Source) -> f64 {
        match (self.jailbreak, source) {
            (Some(j), Source::Direct) => f64::from(probs[j]),
            _ => (1.0 - f64::from(probs[self.benign])).clamp(0.0, 1.0),
        }
    }
}

/// A Prompt Guard model loaded for scoring.
pub struct PromptGuard {
    classifier: Mutex<SequenceClassifier>,
    /// The label names, kept apart so that reading them never waits for a scoring run.
    labels: Vec<String>,
    scoring: Scoring,
    name: String,
}

impl PromptGuard {
    /// Loads a folder with model.onnx (a sequence classifier), tokenizer.json and
    /// config.json.
    pub fn open(dir: &Path, session: &SessionOptions) -> Result<Self, GuardError> {
        let classifier = SequenceClassifier::open(dir, session)?;
        let scoring = Scoring::from_labels(classifier.labels()).ok_or_else(|| {
            GuardError::Model(format!(
                "{}: cannot tell the benign label from the attack labels among {:?} \
                 (expected BENIGN/SAFE, or two labels with benign first, or v1's \
                 BENIGN, INJECTION, JAILBREAK)",
                dir.display(),
                classifier.labels()
            ))
        })?;
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map_or_else(
                || "prompt-guard".into(),
                |n| n.to_string_lossy().into_owned(),
            );
        Ok(Self {
            labels: classifier.labels().to_vec(),
            classifier: Mutex::new(classifier),
            scoring,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn scoring(&self) -> &Scoring {
        &self.scoring
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SequenceClassifier> {
        self.classifier.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Each window's class probabilities for one text (for tests and tools).
    pub fn window_probabilities(&self, text: &str) -> Result<Vec<Vec<f32>>, GuardError> {
        let mut c = self.lock();
        let windows = c.windows(&c.encode(text)?);
        Ok(c.probabilities(&windows)?)
    }

    /// The attack score of each text (its worst window). Windows of all texts run together,
    /// shortest first so that rows of one batch pad little; the caller's deadline or
    /// cancellation is checked between batches (one batch, at most one window of 512
    /// tokens or a few short ones, is the most it waits for after giving up).
    pub fn scores(
        &self,
        texts: &[(Source, String)],
        until: &Until,
    ) -> Result<Vec<f64>, GuardError> {
        let mut rows: Vec<(usize, Vec<u32>)> = Vec::new();
        {
            let c = self.lock();
            for (i, (_, text)) in texts.iter().enumerate() {
                rows.extend(c.windows(&c.encode(text)?).into_iter().map(|w| (i, w)));
            }
        }
        rows.sort_by_key(|(_, w)| w.len());
        let (owners, windows): (Vec<usize>, Vec<Vec<u32>>) = rows.into_iter().unzip();
        let mut scores = vec![0.0f64; texts.len()];
        for range in batches(&windows) {
            if until.given_up(Instant::now()) {
                return Err(GuardError::Timeout(
                    "the prompt-attack check was given up".into(),
                ));
            }
            let probs = self.lock().probabilities(&windows[range.clone()])?;
            for (&i, p) in owners[range].iter().zip(&probs) {
                scores[i] = scores[i].max(self.scoring.score(p, texts[i].0));
            }
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn v1_scores_jailbreaks_in_direct_text_and_any_attack_in_indirect_text() {
        let s = Scoring::from_labels(&labels(&["BENIGN", "INJECTION", "JAILBREAK"])).unwrap();
        let p = [0.2, 0.7, 0.1];
        assert!((s.score(&p, Source::Direct) - 0.1).abs() < 1e-6);
        assert!((s.score(&p, Source::Indirect) - 0.8).abs() < 1e-6);
    }

    #[test]
    fn binary_models_score_not_benign_whatever_the_order_of_names() {
        let v2 = Scoring::from_labels(&labels(&["LABEL_0", "LABEL_1"])).unwrap();
        assert_eq!(
            v2,
            Scoring {
                benign: 0,
                jailbreak: None
            }
        );
        assert!((v2.score(&[0.3, 0.7], Source::Direct) - 0.7).abs() < 1e-6);
        let flipped = Scoring::from_labels(&labels(&["INJECTION", "SAFE"])).unwrap();
        assert_eq!(flipped.benign, 1);
        assert!((flipped.score(&[0.9, 0.1], Source::Indirect) - 0.9).abs() < 1e-6);
    }

    #[test]
    fn unreadable_labels_are_refused() {
        assert_eq!(Scoring::from_labels(&labels(&["A", "B", "C"])), None);
        assert_eq!(Scoring::from_labels(&labels(&["BENIGN", "X", "Y"])), None);
        assert_eq!(Scoring::from_labels(&labels(&["ONLY"])), None);
    }

    #[test]
    fn tool_turns_are_indirect() {
        assert_eq!(Source::of_role("tool"), Source::Indirect);
        assert_eq!(Source::of_role("user"), Source::Direct);
        assert_eq!(Source::of_role("system"), Source::Direct);
    }
}
