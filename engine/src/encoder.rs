//! Feature extraction: an encoder graph (`safegate models import-gguf --encoder-layers`)
//! returns hidden states; each sequence becomes one vector, the mean of every listed layer's
//! states over its tokens, the layers side by side.
//!
//! The first position is left out of the mean when a sequence has more than one token:
//! Llama-family models park very large activations on it (an "attention sink"), which would
//! swamp the average of everything else.
//!
//! [`Pooling::MeanAndLast`] adds each layer's state at the last position: in a causal model
//! only that position has read the whole sequence, and when the sequence ends where the
//! assistant's reply would start (a chat-template wrapper), it holds what the model is
//! about to do with the request, not only which words it contains.

use std::path::Path;

use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

use crate::chat::ChatTokenizer;
use crate::error::{EngineError, Result};
use crate::model::ModelFiles;
use crate::session::{open_session, Provider, SessionOptions};

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The mean over positions (the first left out), per layer.
    #[default]
    Mean,
    /// The mean per layer, then the last position's state per layer.
    MeanAndLast,
}

impl Pooling {
    /// The name on the command line and in head files.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::MeanAndLast => "mean-and-last",
        }
    }

    /// Feature width when one position gives `per_position` features (hidden size times
    /// layers).
    pub fn width(self, per_position: usize) -> usize {
        match self {
            Pooling::Mean => per_position,
            Pooling::MeanAndLast => 2 * per_position,
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [Pooling::Mean, Pooling::MeanAndLast]
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown pooling `{s}` (mean, mean-and-last)"))
    }
}

/// One ONNX Runtime session of an encoder graph and its tokenizer.
pub struct Encoder {
    session: Session,
    /// `hidden_states.N` outputs, by layer.
    outputs: Vec<String>,
    hidden: usize,
    tokenizer: ChatTokenizer,
    pub provider: Provider,
}

impl Encoder {
    pub fn open(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        let files = ModelFiles::locate(dir)?;
        let tokenizer = ChatTokenizer::load(&files)?;
        let (session, provider) = open_session(&files.onnx, opts)?;
        let mut layers: Vec<(usize, String, usize)> = Vec::new();
        for o in session.outputs() {
            let Some(n) = o
                .name()
                .strip_prefix("hidden_states.")
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let width = match o.dtype() {
                ort::value::ValueType::Tensor { shape, .. } => {
                    shape.last().copied().unwrap_or(-1).max(0) as usize
                }
                _ => 0,
            };
            layers.push((n, o.name().to_string(), width));
        }
        layers.sort();
        let hidden = layers.first().map_or(0, |l| l.2);
        if layers.is_empty() || hidden == 0 || layers.iter().any(|l| l.2 != hidden) {
            return Err(EngineError::UnsupportedLayout {
                path: dir.to_path_buf(),
                message: "not an encoder: expected outputs `hidden_states.N` of one fixed width \
                          (import one with `safegate models import-gguf --encoder-layers ...`)"
                    .into(),
            });
        }
        Ok(Self {
            session,
            outputs: layers.into_iter().map(|l| l.1).collect(),
            hidden,
            tokenizer,
            provider,
        })
    }

    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// The length of one mean-pooled feature vector: hidden size times layers.
    pub fn dim(&self) -> usize {
        self.hidden * self.outputs.len()
    }

    /// The length of one feature vector pooled by `pooling`.
    pub fn dim_for(&self, pooling: Pooling) -> usize {
        pooling.width(self.dim())
    }

    /// The layer outputs read, in feature order.
    pub fn layers(&self) -> &[String] {
        &self.outputs
    }

    /// One mean-pooled vector per sequence, computed as one padded batch.
    pub fn pooled(&mut self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        self.pooled_by(batch, Pooling::Mean)
    }

    /// One vector per sequence, pooled by `pooling`, computed as one padded batch.
    pub fn pooled_by(&mut self, batch: &[Vec<u32>], pooling: Pooling) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if batch.iter().any(Vec::is_empty) {
            return Err(EngineError::InvalidRequest(
                "cannot encode an empty sequence".into(),
            ));
        }
        let b = batch.len();
        let s = batch.iter().map(Vec::len).max().unwrap_or(1);
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        let mut pos = vec![0i64; b * s];
        for (r, seq) in batch.iter().enumerate() {
            for (c, &t) in seq.iter().enumerate() {
                ids[r * s + c] = t as i64;
                mask[r * s + c] = 1;
                pos[r * s + c] = c as i64;
            }
        }
        let inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::<i64>::from_array(([b, s], ids))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::<i64>::from_array(([b, s], mask))?.into(),
            ),
            (
                "position_ids".into(),
                Tensor::<i64>::from_array(([b, s], pos))?.into(),
            ),
        ];
        let dim = self.dim();
        let h = self.hidden;
        let outputs = self.session.run(inputs)?;
        let mut pooled = vec![vec![0f32; pooling.width(dim)]; b];
        for (k, name) in self.outputs.iter().enumerate() {
            let value = outputs
                .get(name.as_str())
                .ok_or_else(|| EngineError::Ort(format!("the encoder returned no `{name}`")))?;
            let (_, data) = value.try_extract_tensor::<f32>()?;
            for (r, seq) in batch.iter().enumerate() {
                let first = usize::from(seq.len() > 1);
                let n = (seq.len() - first) as f32;
                let out = &mut pooled[r][k * h..(k + 1) * h];
                for c in first..seq.len() {
                    let row = &data[(r * s + c) * h..(r * s + c + 1) * h];
                    for (o, v) in out.iter_mut().zip(row) {
                        *o += v;
                    }
                }
                for o in out.iter_mut() {
                    *o /= n;
                }
                if pooling == Pooling::MeanAndLast {
                    let c = seq.len() - 1;
                    pooled[r][dim + k * h..dim + (k + 1) * h]
                        .copy_from_slice(&data[(r * s + c) * h..(r * s + c + 1) * h]);
                }
            }
        }
        Ok(pooled)
    }
}
