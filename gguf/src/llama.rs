//! The Llama decoder as an ONNX graph in the Optimum layout (inputs `input_ids`,
//! `attention_mask`, `position_ids`, `past_key_values.{i}.key/value`; outputs `logits`,
//! `present.{i}.key/value`), built from GGUF tensors with plain ONNX ops (opset 18).

use crate::onnx::{Attr, DataType, Dim, Graph, ValueInfo};
use crate::{GgufError, GgufFile, Value};

/// The hyper-parameters of a Llama model, from GGUF metadata and tensor shapes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LlamaParams {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub context_length: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tied_embeddings: bool,
    /// Per-frequency divisors (`rope_freqs.weight`, Llama 3.1+ long-context scaling).
    #[serde(skip)]
    pub rope_factors: Option<Vec<f32>>,
}

fn meta_usize(g: &GgufFile, key: &str) -> Result<usize, GgufError> {
    g.get(key)
        .ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: "missing".into(),
        })?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            message: "not an unsigned integer".into(),
        })
}

impl LlamaParams {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, GgufError> {
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| GgufError::Metadata {
                key: "general.architecture".into(),
                message: "missing".into(),
            })?;
        if arch != "llama" {
            return Err(GgufError::Unsupported(format!(
                "general.architecture is `{arch}`; only `llama` (Llama 2/3, Llama Guard, SmolLM, Mistral-style llama) is supported"
            )));
        }
        let k = |name: &str| format!("llama.{name}");
        let hidden = meta_usize(g, &k("embedding_length"))?;
        let heads = meta_usize(g, &k("attention.head_count"))?;
        let kv_heads = match g.get(&k("attention.head_count_kv")) {
            Some(_) => meta_usize(g, &k("attention.head_count_kv"))?,
            None => heads,
        };
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(GgufError::Metadata {
                key: k("attention.head_count_kv"),
                message: format!("{kv_heads} KV heads do not divide {heads} heads"),
            });
        }
        let head_dim = match g.get(&k("attention.key_length")) {
            Some(_) => meta_usize(g, &k("attention.key_length"))?,
            None => hidden / heads,
        };
        if let Some(rot) = g.get(&k("rope.dimension_count")).and_then(Value::as_u64) {
            if rot as usize != head_dim {
                return Err(GgufError::Unsupported(format!(
                    "llama.rope.dimension_count is {rot} but heads have {head_dim} dimensions: partial rotary is not supported"
                )));
            }
        }
        if !head_dim.is_multiple_of(2) {
            return Err(GgufError::Metadata {
                key: k("attention.key_length"),
                message: format!("head dimension {head_dim} is odd"),
            });
        }
        let embed = g
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".into()))?;
        if embed.dims.len() != 2 || embed.dims[0] as usize != hidden {
            return Err(GgufError::Shape {
                tensor: embed.name.clone(),
                found: embed.dims.clone(),
                expected: vec![hidden as u64, 0],
            });
        }
        let rope_factors = match g.tensor("rope_freqs.weight") {
            Some(t) => Some(g.dequantize(t)?),
            None => None,
        };
        Ok(Self {
            vocab_size: embed.dims[1] as usize,
            hidden_size: hidden,
            num_layers: meta_usize(g, &k("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            intermediate_size: meta_usize(g, &k("feed_forward_length"))?,
            context_length: meta_usize(g, &k("context_length"))?,
            rope_theta: g
                .get(&k("rope.freq_base"))
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
            rms_norm_eps: g
                .get(&k("attention.layer_norm_rms_epsilon"))
                .and_then(Value::as_f64)
                .unwrap_or(1e-5),
            tied_embeddings: g.tensor("output.weight").is_none(),
            rope_factors,
        })
    }

    /// cos and sin tables `[positions, head_dim / 2]` as HF Llama computes them.
    pub fn rope_tables(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        let half = self.head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64);
                match &self.rope_factors {
                    Some(f) if f.len() == half => base / f64::from(f[i]),
                    _ => base,
                }
            })
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }
}

/// How the weight matrices are stored in the ONNX file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// Half precision on disk, cast to f32 when the session loads.
    F16,
    /// Half precision end to end, for CUDA: weights, activations, KV cache and logits in
    /// float16 (no casts of the weights at load); RMSNorm and the attention softmax are
    /// computed in f32 and cast back, as fp16 inference engines do.
    F16Compute,
    /// Linear layers as 4-bit blocks of 32 with a scale and zero point each (ONNX Runtime's
    /// `com.microsoft.MatMulNBits`); embeddings and norms stay f32. `accuracy_level` 4 lets
    /// the CPU kernel quantize activations to int8 (faster); 0 computes in f32.
    Int4 {
        accuracy_level: u8,
    },
    /// The 4-bit values, dequantized and stored as f32 (what `Int4` computes, for tests).
    #[doc(hidden)]
    Int4Dequantized,
}

/// MatMulNBits' dequantization of [`quantize_int4`]'s blocks, `[n][k]`.
pub fn dequantize_int4(
    packed: &[u8],
    scales: &[f32],
    zeros: &[u8],
    n: usize,
    k: usize,
) -> Vec<f32> {
    let blocks = k.div_ceil(INT4_BLOCK);
    let zp_row = blocks.div_ceil(2);
    let mut w = vec![0f32; n * k];
    for row in 0..n {
        for col in 0..k {
            let b = col / INT4_BLOCK;
            let i = col % INT4_BLOCK;
            let q = (packed[(row * blocks + b) * INT4_BLOCK / 2 + i / 2] >> (4 * (i % 2))) & 15;
            let zp = (zeros[row * zp_row + b / 2] >> (4 * (b % 2))) & 15;
            w[row * k + col] = (f32::from(q) - f32::from(zp)) * scales[row * blocks + b];
        }
    }
    w
}

/// Block size of the 4-bit format.
const INT4_BLOCK: usize = 32;

/// Quantizes `[n][k]` weights (one row per output) to MatMulNBits' layout: packed 4-bit
/// values `[n][k/32][16]` (low nibble first), f32 scales `[n * k/32]` and packed 4-bit zero
/// points `[n * ceil(k/32 / 2)]`. Asymmetric per block: min..max map onto 0..15.
pub fn quantize_int4(w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let blocks = k.div_ceil(INT4_BLOCK);
    let zp_row = blocks.div_ceil(2);
    let mut packed = vec![0u8; n * blocks * INT4_BLOCK / 2];
    let mut scales = vec![0f32; n * blocks];
    let mut zeros = vec![0u8; n * zp_row];
    for row in 0..n {
        let values = &w[row * k..(row + 1) * k];
        for b in 0..blocks {
            let block = &values[b * INT4_BLOCK..((b + 1) * INT4_BLOCK).min(k)];
            let min = block.iter().copied().fold(0f32, f32::min);
            let max = block.iter().copied().fold(0f32, f32::max);
            let scale = if max > min { (max - min) / 15.0 } else { 1.0 };
            let zp = (-min / scale).round().clamp(0.0, 15.0);
            scales[row * blocks + b] = scale;
            zeros[row * zp_row + b / 2] |= (zp as u8) << (4 * (b % 2));
            let out = &mut packed[(row * blocks + b) * INT4_BLOCK / 2..];
            for (i, v) in block.iter().enumerate() {
                let q = (v / scale + zp).round().clamp(0.0, 15.0) as u8;
                out[i / 2] |= q << (4 * (i % 2));
            }
        }
    }
    (packed, scales, zeros)
}

/// Undoes llama.cpp's converter permutation of Q/K rows: it stores, per head, the rotary
/// pairs interleaved (row `2j + half`) where HF Llama has them in halves (row
/// `half * d/2 + j`). `w` is `[rows][cols]`.
pub fn unpermute_rows<T: Copy + Default>(
    w: &[T],
    heads: usize,
    head_dim: usize,
    cols: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let src = (h * head_dim + 2 * j + s) * cols;
                let dst = (h * head_dim + s * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// `[rows][cols]` to `[cols][rows]`.
pub fn transpose<T: Copy + Default>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    // In square tiles: a plain loop writes one value per cache line of the output, and an
    // 8B model's matrices are gigabytes.
    const TILE: usize = 64;
    let mut out = vec![T::default(); w.len()];
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = w[r * cols + c];
                }
            }
        }
    }
    out
}

/// `values` as float16, little-endian bytes (ONNX's raw data).
fn f16_bytes(values: &[f32]) -> Vec<u8> {
    let mut data = Vec::with_capacity(values.len() * 2);
    for v in values {
        data.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
    }
    data
}

/// 16-bit values (float16 bits) as little-endian bytes.
fn le_bytes(values: &[u16]) -> Vec<u8> {
    let mut data = Vec::with_capacity(values.len() * 2);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data
}

struct Builder<'a> {
    gguf: &'a GgufFile,
    p: &'a LlamaParams,
    format: WeightFormat,
    g: Graph,
}

impl Builder<'_> {
    /// A GGUF tensor's description, checking its ggml shape.
    fn info(&self, name: &str, dims: &[usize]) -> Result<&crate::TensorInfo, GgufError> {
        let t = self
            .gguf
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            return Err(GgufError::Shape {
                tensor: name.into(),
                found: t.dims.clone(),
                expected: want,
            });
        }
        Ok(t)
    }

    /// A GGUF tensor as f32, checking its ggml shape.
    fn tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, GgufError> {
        self.gguf.dequantize(self.info(name, dims)?)
    }

    fn vector(&mut self, gguf_name: &str, onnx_name: &str) -> Result<String, GgufError> {
        let h = self.p.hidden_size;
        let v = self.tensor(gguf_name, &[h])?;
        // A float16 graph scales its f16 activations by f16 weights (the norm's last Mul).
        if self.half() {
            return Ok(self.weight(onnx_name, &v, &[h as i64]));
        }
        Ok(self.g.init_f32(onnx_name, &[h as i64], &v))
    }

    /// Whether activations, the KV cache and the logits are float16.
    fn half(&self) -> bool {
        self.format == WeightFormat::F16Compute
    }

    /// Stores `[in][out]` weights in the chosen format; returns the name of the value the
    /// graph computes with (f32, or f16 for `F16Compute`).
    fn weight(&mut self, name: &str, values: &[f32], dims: &[i64]) -> String {
        match self.format {
            WeightFormat::F32 | WeightFormat::Int4 { .. } | WeightFormat::Int4Dequantized => {
                self.g.init_f32(name, dims, values)
            }
            WeightFormat::F16 | WeightFormat::F16Compute => {
                self.weight_f16(name, f16_bytes(values), dims)
            }
        }
    }

    /// Stores float16 weights (little-endian bytes); returns the name of the value the graph
    /// computes with (cast to f32 unless the graph is float16 end to end).
    fn weight_f16(&mut self, name: &str, data: Vec<u8>, dims: &[i64]) -> String {
        let stored = self.g.init(name, dims, DataType::Float16, data);
        if self.half() {
            stored
        } else {
            self.g.cast(&stored, DataType::Float)
        }
    }

    /// `x @ W` for a GGUF linear layer (ggml dims `[in, out]`, i.e. HF `[out][in]`).
    fn linear(
        &mut self,
        x: &str,
        gguf_name: &str,
        onnx_name: &str,
        inputs: usize,
        outputs: usize,
        unpermute_heads: Option<usize>,
    ) -> Result<String, GgufError> {
        let rows = self.rows(gguf_name, inputs, outputs, unpermute_heads)?;
        Ok(self.matmul_rows(x, rows, onnx_name, inputs, outputs))
    }

    /// `x @ W` for each of `N` GGUF linear layers of the same input, one product each.
    fn linear_each<const N: usize>(
        &mut self,
        x: &str,
        parts: &[Projection; N],
        inputs: usize,
    ) -> Result<[String; N], GgufError> {
        let mut out = Vec::with_capacity(N);
        for p in parts {
            out.push(self.linear(
                x,
                &p.gguf_name,
                &p.onnx_name,
                inputs,
                p.outputs,
                p.unpermute_heads,
            )?);
        }
        Ok(out.try_into().expect("one product per part"))
    }

    /// One `x @ W` for several GGUF linear layers of the same input, their outputs side by
    /// side (`[..., sum of outputs]`): e.g. Q, K and V packed, which GroupQueryAttention
    /// splits itself (one matrix product per layer where there were three).
    fn linear_packed(
        &mut self,
        x: &str,
        parts: &[Projection],
        onnx_name: &str,
        inputs: usize,
    ) -> Result<String, GgufError> {
        let mut all = Vec::with_capacity(parts.len());
        for p in parts {
            all.push(self.rows(&p.gguf_name, inputs, p.outputs, p.unpermute_heads)?);
        }
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let packed = if all.iter().all(|r| matches!(r, Rows::F16(_))) {
            Rows::F16(
                all.into_iter()
                    .flat_map(|r| match r {
                        Rows::F16(bits) => bits,
                        Rows::F32(_) => unreachable!("all float16"),
                    })
                    .collect(),
            )
        } else {
            Rows::F32(all.into_iter().flat_map(Rows::into_f32).collect())
        };
        Ok(self.matmul_rows(x, packed, onnx_name, inputs, outputs))
    }

    /// A linear layer's weights in HF `[out][in]` rows, llama.cpp's Q/K row permutation
    /// undone: float16 bits as stored when the graph keeps float16, else f32.
    fn rows(
        &self,
        gguf_name: &str,
        inputs: usize,
        outputs: usize,
        unpermute_heads: Option<usize>,
    ) -> Result<Rows, GgufError> {
        let d = self.p.head_dim;
        Ok(match self.f16_values(gguf_name, &[inputs, outputs])? {
            Some(w) => Rows::F16(match unpermute_heads {
                Some(heads) => unpermute_rows(&w, heads, d, inputs),
                None => w,
            }),
            None => {
                let w = self.tensor(gguf_name, &[inputs, outputs])?;
                Rows::F32(match unpermute_heads {
                    Some(heads) => unpermute_rows(&w, heads, d, inputs),
                    None => w,
                })
            }
        })
    }

    fn matmul_rows(
        &mut self,
        x: &str,
        rows: Rows,
        onnx_name: &str,
        inputs: usize,
        outputs: usize,
    ) -> String {
        match rows {
            Rows::F16(bits) => self.matmul_f16(x, &bits, onnx_name, inputs, outputs),
            Rows::F32(w) => self.matmul(x, w, onnx_name, inputs, outputs),
        }
    }

    /// A float16 GGUF tensor's raw values (ggml order) when the graph stores float16
    /// weights: they are then transposed and written as they are, without the round trip
    /// through f32 (an 8B model's import moves a third of the bytes).
    fn f16_values(&self, name: &str, dims: &[usize]) -> Result<Option<Vec<u16>>, GgufError> {
        let t = self.info(name, dims)?;
        if t.ggml_type != crate::quant::GgmlType::F16
            || !matches!(self.format, WeightFormat::F16 | WeightFormat::F16Compute)
        {
            return Ok(None);
        }
        let raw = self.gguf.raw(t)?;
        Ok(Some(
            raw.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ))
    }

    /// [`Self::matmul`] for float16 bits in `[outputs][inputs]` layout.
    fn matmul_f16(
        &mut self,
        x: &str,
        w: &[u16],
        onnx_name: &str,
        inputs: usize,
        outputs: usize,
    ) -> String {
        let data = le_bytes(&transpose(w, outputs, inputs));
        let name = self.weight_f16(onnx_name, data, &[inputs as i64, outputs as i64]);
        self.g.op("MatMul", &[x, &name], &[])
    }

    /// `x @ W.T` for `w` in `[outputs][inputs]` (HF) layout, in the chosen weight format.
    fn matmul(
        &mut self,
        x: &str,
        mut w: Vec<f32>,
        onnx_name: &str,
        inputs: usize,
        outputs: usize,
    ) -> String {
        if self.format == WeightFormat::Int4Dequantized && inputs.is_multiple_of(INT4_BLOCK) {
            let (packed, scales, zeros) = quantize_int4(&w, outputs, inputs);
            w = dequantize_int4(&packed, &scales, &zeros, outputs, inputs);
        }
        if let (WeightFormat::Int4 { accuracy_level }, 0) = (self.format, inputs % INT4_BLOCK) {
            let (packed, scales, zeros) = quantize_int4(&w, outputs, inputs);
            let blocks = (inputs / INT4_BLOCK) as i64;
            let (n, k) = (outputs as i64, inputs as i64);
            let g = &mut self.g;
            let b = g.init(
                &format!("{onnx_name}.q4"),
                &[n, blocks, (INT4_BLOCK / 2) as i64],
                DataType::Uint8,
                packed,
            );
            let s = g.init_f32(&format!("{onnx_name}.scales"), &[n * blocks], &scales);
            let z = g.init(
                &format!("{onnx_name}.zero_points"),
                &[zeros.len() as i64],
                DataType::Uint8,
                zeros,
            );
            return g.op_in(
                "com.microsoft",
                "MatMulNBits",
                &[x, &b, &s, &z],
                &[
                    ("K", Attr::Int(k)),
                    ("N", Attr::Int(n)),
                    ("bits", Attr::Int(4)),
                    ("block_size", Attr::Int(INT4_BLOCK as i64)),
                    ("accuracy_level", Attr::Int(accuracy_level.into())),
                ],
            );
        }
        let w = transpose(&w, outputs, inputs);
        let name = self.weight(onnx_name, &w, &[inputs as i64, outputs as i64]);
        self.g.op("MatMul", &[x, &name], &[])
    }

    /// RMSNorm, `x / sqrt(mean(x²) + eps) * w`, in f32 even in a float16 graph (the mean of
    /// squares overflows f16 easily), cast back before the scale. Written with Pow and Div,
    /// in the shape ONNX Runtime's optimizer fuses into one SimplifiedLayerNormalization
    /// (and, with the residual Add before it, SkipSimplifiedLayerNormalization): on CUDA
    /// each of the nine nodes it replaces is a kernel launch per layer per token.
    fn rms_norm(&mut self, x: &str, weight: &str) -> String {
        let half = self.half();
        let eps = self.p.rms_norm_eps as f32;
        let g = &mut self.g;
        let x32 = if half {
            g.cast(x, DataType::Float)
        } else {
            x.to_string()
        };
        let two = g.scalar_f32(2.0);
        let sq = g.op("Pow", &[&x32, &two], &[]);
        let axes = g.const_i64(&[-1]);
        let mean = g.op("ReduceMean", &[&sq, &axes], &[("keepdims", Attr::Int(1))]);
        let eps = g.scalar_f32(eps);
        let var = g.op("Add", &[&mean, &eps], &[]);
        let std = g.op("Sqrt", &[&var], &[]);
        let normed = g.op("Div", &[&x32, &std], &[]);
        let normed = if half {
            g.cast(&normed, DataType::Float16)
        } else {
            normed
        };
        g.op("Mul", &[&normed, weight], &[])
    }

    /// HF Llama rotary (`rotate_half`) on the last axis.
    fn rotate(&mut self, x: &str, cos: &str, sin: &str) -> String {
        let g = &mut self.g;
        let halves = g.op_n(
            "Split",
            &[x],
            2,
            &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(2))],
        );
        let (x1, x2) = (&halves[0], &halves[1]);
        let a = g.op("Mul", &[x1, cos], &[]);
        let b = g.op("Mul", &[x2, sin], &[]);
        let out1 = g.op("Sub", &[&a, &b], &[]);
        let c = g.op("Mul", &[x2, cos], &[]);
        let d = g.op("Mul", &[x1, sin], &[]);
        let out2 = g.op("Add", &[&c, &d], &[]);
        g.op("Concat", &[&out1, &out2], &[("axis", Attr::Int(-1))])
    }
}

/// Weights in `[out][in]` rows: float16 bits as a float16 GGUF stores them, or f32.
enum Rows {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl Rows {
    fn into_f32(self) -> Vec<f32> {
        match self {
            Rows::F16(bits) => bits
                .into_iter()
                .map(|b| half::f16::from_bits(b).to_f32())
                .collect(),
            Rows::F32(w) => w,
        }
    }
}

/// One linear layer of a packed product: its GGUF tensor, its outputs, and the heads whose
/// rows llama.cpp permuted (Q and K).
struct Projection {
    gguf_name: String,
    onnx_name: String,
    outputs: usize,
    unpermute_heads: Option<usize>,
}

/// A decoder's output head.
enum Head {
    /// Tied, f32/f16 weights: the embedding transposed at load (no second copy on disk).
    Transposed(String),
    /// Tied, 4-bit weights: its own 4-bit copy of the embedding's values.
    Quantized(Vec<f32>),
    /// `output.weight`, read when the graph reaches it.
    Own,
}

/// How each layer attends: plain ONNX operators (the Optimum layout) or one fused
/// GroupQueryAttention node (the onnxruntime-genai layout).
enum Attention {
    Plain(PlainAttentionInputs),
    GroupQuery(GroupQueryInputs),
}

/// What every layer's plain attention shares: the rotary rows of the positions, the additive
/// mask and the reshape targets.
struct PlainAttentionInputs {
    cos_q: String,
    sin_q: String,
    cos_k: String,
    sin_k: String,
    /// `[B,1,1,S,T]`: 0 where attention is allowed, -3e38 where not.
    bias: String,
    scale: String,
    q_shape: String,
    kv_shape: String,
    flat: String,
    ax2: String,
}

impl PlainAttentionInputs {
    fn new(g: &mut Graph, p: &LlamaParams, half: bool, cos_tab: &str, sin_tab: &str) -> Self {
        let (nh, nkv, d) = (p.num_heads, p.num_kv_heads, p.head_dim);
        let rep = nh / nkv;
        let cos = g.op(
            "Gather",
            &[cos_tab, "position_ids"],
            &[("axis", Attr::Int(0))],
        );
        let sin = g.op(
            "Gather",
            &[sin_tab, "position_ids"],
            &[("axis", Attr::Int(0))],
        );
        let (cos, sin) = if half {
            (
                g.cast(&cos, DataType::Float16),
                g.cast(&sin, DataType::Float16),
            )
        } else {
            (cos, sin)
        };
        let ax1 = g.const_i64(&[1]);
        let ax12 = g.const_i64(&[1, 2]);
        let cos_k = g.op("Unsqueeze", &[&cos, &ax1], &[]);
        let sin_k = g.op("Unsqueeze", &[&sin, &ax1], &[]);
        let cos_q = g.op("Unsqueeze", &[&cos, &ax12], &[]);
        let sin_q = g.op("Unsqueeze", &[&sin, &ax12], &[]);

        // Additive mask [B,1,1,S,T]: causal over absolute positions, and the padding mask.
        let one = g.scalar_i64(1);
        let zero = g.scalar_i64(0);
        let mask_shape = g.op("Shape", &["attention_mask"], &[]);
        let t_len = g.op("Gather", &[&mask_shape, &one], &[("axis", Attr::Int(0))]);
        let ids_shape = g.op("Shape", &["input_ids"], &[]);
        let s_len = g.op("Gather", &[&ids_shape, &one], &[("axis", Attr::Int(0))]);
        let first = g.op("Sub", &[&t_len, &s_len], &[]);
        let q_pos = g.op("Range", &[&first, &t_len, &one], &[]);
        let k_pos = g.op("Range", &[&zero, &t_len, &one], &[]);
        let ax0 = g.const_i64(&[0]);
        let k_row = g.op("Unsqueeze", &[&k_pos, &ax0], &[]);
        let q_col = g.op("Unsqueeze", &[&q_pos, &ax1], &[]);
        let causal = g.op("LessOrEqual", &[&k_row, &q_col], &[]);
        let ax123 = g.const_i64(&[1, 2, 3]);
        let mask5 = g.op("Unsqueeze", &["attention_mask", &ax123], &[]);
        let pad = g.op("Equal", &[&mask5, &one], &[]);
        let allowed = g.op("And", &[&causal, &pad], &[]);
        let open = g.scalar_f32(0.0);
        let closed = g.scalar_f32(-3.0e38);
        let bias = g.op("Where", &[&allowed, &open, &closed], &[]);
        Self {
            cos_q,
            sin_q,
            cos_k,
            sin_k,
            bias,
            scale: g.scalar_f32(1.0 / (d as f32).sqrt()),
            q_shape: g.const_i64(&[0, 0, nkv as i64, rep as i64, d as i64]),
            kv_shape: g.const_i64(&[0, 0, nkv as i64, d as i64]),
            flat: g.const_i64(&[0, 0, -1]),
            ax2: g.const_i64(&[2]),
        }
    }
}

/// What every layer's GroupQueryAttention shares: per row, the index of its last real
/// position (`seqlens_k`, the attention mask's sum less one, as onnxruntime-genai computes
/// it), the mask's width, and the rotary tables.
struct GroupQueryInputs {
    seqlens_k: String,
    total_len: String,
    cos_cache: String,
    sin_cache: String,
}

impl GroupQueryInputs {
    fn new(g: &mut Graph, cos_cache: String, sin_cache: String) -> Self {
        let ax1 = g.const_i64(&[1]);
        let sum = g.op(
            "ReduceSum",
            &["attention_mask", &ax1],
            &[("keepdims", Attr::Int(0))],
        );
        let one = g.scalar_i64(1);
        let last = g.op("Sub", &[&sum, &one], &[]);
        let seqlens_k = g.cast(&last, DataType::Int32);
        let mask_shape = g.op("Shape", &["attention_mask"], &[]);
        let width = g.op("Gather", &[&mask_shape, &one], &[("axis", Attr::Int(0))]);
        let total_len = g.cast(&width, DataType::Int32);
        Self {
            seqlens_k,
            total_len,
            cos_cache,
            sin_cache,
        }
    }
}

impl Builder<'_> {
    /// Plain-operator attention of one layer on `q`, `k`, `v` (`[B,S,heads*d]`): rotary,
    /// the KV cache (`Some((past, present))` names; `None` for an encoder), grouped heads,
    /// the masked softmax in f32. Returns the context `[B,S,heads*d]`.
    fn plain_attention(
        &mut self,
        a: &PlainAttentionInputs,
        q: &str,
        k: &str,
        v: &str,
        kv: Option<(&[String; 2], &[String; 2])>,
    ) -> String {
        let half = self.half();
        let g = &mut self.g;
        let q = g.op("Reshape", &[q, &a.q_shape], &[]);
        let q = g.op(
            "Transpose",
            &[&q],
            &[("perm", Attr::Ints(vec![0, 2, 3, 1, 4]))],
        );
        let k = g.op("Reshape", &[k, &a.kv_shape], &[]);
        let k = g.op(
            "Transpose",
            &[&k],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let v = g.op("Reshape", &[v, &a.kv_shape], &[]);
        let v = g.op(
            "Transpose",
            &[&v],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let q = self.rotate(&q, &a.cos_q, &a.sin_q);
        let k = self.rotate(&k, &a.cos_k, &a.sin_k);
        let g = &mut self.g;
        let (present_k, present_v) = match kv {
            None => (k, v),
            Some((past, present)) => {
                g.node_to(
                    "Concat",
                    &[&past[0], &k],
                    &[&present[0]],
                    &[("axis", Attr::Int(2))],
                );
                g.node_to(
                    "Concat",
                    &[&past[1], &v],
                    &[&present[1]],
                    &[("axis", Attr::Int(2))],
                );
                (present[0].clone(), present[1].clone())
            }
        };
        let k_all = g.op("Unsqueeze", &[&present_k, &a.ax2], &[]);
        let v_all = g.op("Unsqueeze", &[&present_v, &a.ax2], &[]);
        let k_t = g.op(
            "Transpose",
            &[&k_all],
            &[("perm", Attr::Ints(vec![0, 1, 2, 4, 3]))],
        );
        let scores = g.op("MatMul", &[&q, &k_t], &[]);
        // Scaling, the mask and the softmax in f32: the mask's -3e38 is not a float16, and
        // f16 scores lose the small differences softmax turns into weights.
        let scores = if half {
            g.cast(&scores, DataType::Float)
        } else {
            scores
        };
        let scores = g.op("Mul", &[&scores, &a.scale], &[]);
        let scores = g.op("Add", &[&scores, &a.bias], &[]);
        let probs = g.op("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
        let probs = if half {
            g.cast(&probs, DataType::Float16)
        } else {
            probs
        };
        let ctx = g.op("MatMul", &[&probs, &v_all], &[]);
        let ctx = g.op(
            "Transpose",
            &[&ctx],
            &[("perm", Attr::Ints(vec![0, 3, 1, 2, 4]))],
        );
        g.op("Reshape", &[&ctx, &a.flat], &[])
    }

    /// One layer's attention as `com.microsoft.GroupQueryAttention` (rotary inside, the
    /// cache grown from `past` into `present`) on `[q, k, v]`, or on packed QKV
    /// `[B,S,(heads+2*kv_heads)*d]` as `[qkv, "", ""]`. Returns the context `[B,S,heads*d]`.
    fn group_query_attention(
        &mut self,
        a: &GroupQueryInputs,
        [q, k, v]: [&str; 3],
        past: &[String; 2],
        present: &[String; 2],
    ) -> String {
        let p = self.p;
        let out = format!("{}.attention", present[0]);
        self.g.node_in(
            "com.microsoft",
            "GroupQueryAttention",
            &[
                q,
                k,
                v,
                &past[0],
                &past[1],
                &a.seqlens_k,
                &a.total_len,
                &a.cos_cache,
                &a.sin_cache,
            ],
            &[&out, &present[0], &present[1]],
            &[
                ("num_heads", Attr::Int(p.num_heads as i64)),
                ("kv_num_heads", Attr::Int(p.num_kv_heads as i64)),
                ("do_rotary", Attr::Int(1)),
                ("rotary_interleaved", Attr::Int(0)),
                ("scale", Attr::Float(1.0 / (p.head_dim as f32).sqrt())),
            ],
        );
        out
    }
}

/// What the graph computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphKind {
    /// The decoder: logits and a KV cache.
    Decoder(DecoderGraph),
    /// Hidden states for feature extraction: no KV cache and no output head; one output
    /// `hidden_states.{n}` `[batch, sequence, hidden]` per listed layer `n` (the residual
    /// stream after `n` blocks; `n` = the number of layers is the final normed output).
    Encoder { layers: Vec<usize> },
}

impl Default for GraphKind {
    fn default() -> Self {
        GraphKind::Decoder(DecoderGraph::default())
    }
}

/// How a decoder graph is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecoderGraph {
    pub layout: DecoderLayout,
    /// Logits for every position, as other runtimes expect. Otherwise (the default) the
    /// graph takes `logits_positions` `[batch, k]` and only those positions reach the output
    /// head: a prompt's prefill computes and returns one row of logits, not one per
    /// position (on an 8B model's 746-token guard prompt, 191 MB copied from the GPU).
    pub all_logits: bool,
}

/// The decoder's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecoderLayout {
    /// Optimum's: `position_ids` an input, attention in plain ONNX operators.
    #[default]
    Optimum,
    /// onnxruntime-genai's: no `position_ids` input; each layer attends through one
    /// `com.microsoft.GroupQueryAttention` node with the rotary inside it (fused kernels on
    /// CUDA: a few launches per layer where plain operators take dozens, and the engine
    /// feeds it as it feeds onnxruntime-genai's own exports).
    Genai {
        /// Q, K and V as one matrix product that GroupQueryAttention splits itself. Measured
        /// on an H200 (Llama-3-8B shape, docs/benchmarks.md): decode 6% faster, prefill
        /// about 20% slower; off by default, since the guard's scoring is all prefill.
        packed_qkv: bool,
    },
}

/// Builds the decoder graph; `progress(done, total)` after each layer.
pub fn build_graph(
    gguf: &GgufFile,
    p: &LlamaParams,
    format: WeightFormat,
    positions: usize,
    graph: Graph,
    progress: impl FnMut(usize, usize),
) -> Result<Graph, GgufError> {
    build_graph_of(
        gguf,
        p,
        format,
        positions,
        &GraphKind::default(),
        graph,
        progress,
    )
}

/// Builds the graph of `kind`; `progress(done, total)` after each layer.
pub fn build_graph_of(
    gguf: &GgufFile,
    p: &LlamaParams,
    format: WeightFormat,
    positions: usize,
    kind: &GraphKind,
    graph: Graph,
    mut progress: impl FnMut(usize, usize),
) -> Result<Graph, GgufError> {
    let decoder = match kind {
        GraphKind::Decoder(d) => *d,
        GraphKind::Encoder { .. } => DecoderGraph::default(),
    };
    let encoder_layers = match kind {
        GraphKind::Decoder(_) => None,
        GraphKind::Encoder { layers } => {
            if layers.is_empty() || layers.iter().any(|&l| l == 0 || l > p.num_layers) {
                return Err(GgufError::Metadata {
                    key: "encoder layers".into(),
                    message: format!(
                        "{layers:?}: expected layer numbers from 1 to {}",
                        p.num_layers
                    ),
                });
            }
            Some(layers.clone())
        }
    };
    let encoder = encoder_layers.is_some();
    let mut b = Builder {
        gguf,
        p,
        format,
        g: graph,
    };
    let genai = matches!(decoder.layout, DecoderLayout::Genai { .. });
    let packed_qkv = decoder.layout == DecoderLayout::Genai { packed_qkv: true };
    let select_logits = !encoder && !decoder.all_logits;
    let (h, nh, nkv, d) = (p.hidden_size, p.num_heads, p.num_kv_heads, p.head_dim);
    let total = p.num_layers + 2;

    let emb_dims = [p.vocab_size as i64, h as i64];
    let (emb, emb_values) = match b.f16_values("token_embd.weight", &[h, p.vocab_size])? {
        Some(bits) => {
            let data = le_bytes(&bits);
            drop(bits);
            let emb = b.weight_f16("model.embed_tokens.weight", data, &emb_dims);
            (emb, Vec::new())
        }
        None => {
            let values = b.tensor("token_embd.weight", &[h, p.vocab_size])?;
            (
                b.weight("model.embed_tokens.weight", &values, &emb_dims),
                values,
            )
        }
    };
    // The output head: with f32/f16 weights a tied head is the embedding transposed at
    // load (no second copy on disk); with 4-bit weights it gets its own 4-bit copy, since
    // reading the f32 head dominates each decode step of a small model.
    if b.half() && encoder {
        return Err(GgufError::Metadata {
            key: "weights".into(),
            message: "a float16 graph is for decoders; encoders are written in f32".into(),
        });
    }
    let half = b.half();
    let act = if half {
        DataType::Float16
    } else {
        DataType::Float
    };
    let quantized = !matches!(
        b.format,
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::F16Compute
    );
    let head = if encoder {
        None
    } else if !p.tied_embeddings {
        Some(Head::Own)
    } else if quantized {
        Some(Head::Quantized(emb_values))
    } else {
        drop(emb_values);
        Some(Head::Transposed(b.g.op(
            "Transpose",
            &[&emb],
            &[("perm", Attr::Ints(vec![1, 0]))],
        )))
    };
    let (cos_t, sin_t) = p.rope_tables(positions);
    let half_dim = (d / 2) as i64;
    let attention = if genai {
        // GroupQueryAttention rotates with tables of its own element type.
        let table = |g: &mut Graph, name: &str, values: &[f32]| {
            if half {
                let data = f16_bytes(values);
                g.init(name, &[positions as i64, half_dim], DataType::Float16, data)
            } else {
                g.init_f32(name, &[positions as i64, half_dim], values)
            }
        };
        let cos_cache = table(&mut b.g, "cos_cache", &cos_t);
        let sin_cache = table(&mut b.g, "sin_cache", &sin_t);
        Attention::GroupQuery(GroupQueryInputs::new(&mut b.g, cos_cache, sin_cache))
    } else {
        let cos_tab =
            b.g.init_f32("rope.cos", &[positions as i64, half_dim], &cos_t);
        let sin_tab =
            b.g.init_f32("rope.sin", &[positions as i64, half_dim], &sin_t);
        Attention::Plain(PlainAttentionInputs::new(
            &mut b.g, p, half, &cos_tab, &sin_tab,
        ))
    };
    drop((cos_t, sin_t));
    progress(1, total);
    let x0 =
        b.g.op("Gather", &[&emb, "input_ids"], &[("axis", Attr::Int(0))]);

    // An encoder stops after the deepest layer it reports.
    let blocks = encoder_layers
        .as_ref()
        .and_then(|l| l.iter().max().copied())
        .unwrap_or(p.num_layers);
    let mut x = x0;
    for i in 0..blocks {
        let blk = |n: &str| format!("blk.{i}.{n}.weight");
        let hf = |n: &str| format!("model.layers.{i}.{n}.weight");
        let w = b.vector(&blk("attn_norm"), &hf("input_layernorm"))?;
        let xn = b.rms_norm(&x, &w);
        let projections = [
            Projection {
                gguf_name: blk("attn_q"),
                onnx_name: hf("self_attn.q_proj"),
                outputs: nh * d,
                unpermute_heads: Some(nh),
            },
            Projection {
                gguf_name: blk("attn_k"),
                onnx_name: hf("self_attn.k_proj"),
                outputs: nkv * d,
                unpermute_heads: Some(nkv),
            },
            Projection {
                gguf_name: blk("attn_v"),
                onnx_name: hf("self_attn.v_proj"),
                outputs: nkv * d,
                unpermute_heads: None,
            },
        ];
        let (past, present) = (
            [
                format!("past_key_values.{i}.key"),
                format!("past_key_values.{i}.value"),
            ],
            [format!("present.{i}.key"), format!("present.{i}.value")],
        );
        let ctx = match &attention {
            Attention::GroupQuery(inputs) if packed_qkv => {
                let qkv = b.linear_packed(&xn, &projections, &hf("self_attn.qkv_proj"), h)?;
                b.group_query_attention(inputs, [&qkv, "", ""], &past, &present)
            }
            Attention::GroupQuery(inputs) => {
                let [q, k, v] = b.linear_each(&xn, &projections, h)?;
                b.group_query_attention(inputs, [&q, &k, &v], &past, &present)
            }
            Attention::Plain(inputs) => {
                let [q, k, v] = b.linear_each(&xn, &projections, h)?;
                let kv = (!encoder).then_some((&past, &present));
                b.plain_attention(inputs, &q, &k, &v, kv)
            }
        };
        let o = b.linear(
            &ctx,
            &blk("attn_output"),
            &hf("self_attn.o_proj"),
            nh * d,
            h,
            None,
        )?;
        let x1 = b.g.op("Add", &[&x, &o], &[]);

        let w = b.vector(&blk("ffn_norm"), &hf("post_attention_layernorm"))?;
        let xn = b.rms_norm(&x1, &w);
        let ffn = p.intermediate_size;
        let gate = b.linear(&xn, &blk("ffn_gate"), &hf("mlp.gate_proj"), h, ffn, None)?;
        let up = b.linear(&xn, &blk("ffn_up"), &hf("mlp.up_proj"), h, ffn, None)?;
        let g = &mut b.g;
        let sig = g.op("Sigmoid", &[&gate], &[]);
        let silu = g.op("Mul", &[&gate, &sig], &[]);
        let act = g.op("Mul", &[&silu, &up], &[]);
        let down = b.linear(&act, &blk("ffn_down"), &hf("mlp.down_proj"), ffn, h, None)?;
        x = b.g.op("Add", &[&x1, &down], &[]);
        if let Some(layers) = &encoder_layers {
            if i + 1 < p.num_layers && layers.contains(&(i + 1)) {
                b.g.node_to(
                    "Identity",
                    &[&x],
                    &[&format!("hidden_states.{}", i + 1)],
                    &[],
                );
            }
        }
        progress(i + 2, total);
    }
    let sym = Dim::Symbol;
    let tensor = |name: String, dtype, dims| ValueInfo { name, dtype, dims };
    if let Some(layers) = encoder_layers {
        let n = p.num_layers;
        if layers.contains(&n) {
            let w = b.vector("output_norm.weight", "model.norm.weight")?;
            let xn = b.rms_norm(&x, &w);
            b.g.node_to("Identity", &[&xn], &[&format!("hidden_states.{n}")], &[]);
        }
        let mut sorted = layers;
        sorted.sort_unstable();
        sorted.dedup();
        b.g.inputs = ["input_ids", "attention_mask", "position_ids"]
            .iter()
            .map(|name| {
                tensor(
                    name.to_string(),
                    DataType::Int64,
                    vec![sym("batch_size"), sym("sequence_length")],
                )
            })
            .collect();
        b.g.outputs = sorted
            .iter()
            .map(|l| {
                tensor(
                    format!("hidden_states.{l}"),
                    DataType::Float,
                    vec![
                        sym("batch_size"),
                        sym("sequence_length"),
                        Dim::Fixed(h as i64),
                    ],
                )
            })
            .collect();
        progress(total, total);
        return Ok(b.g);
    }
    // Only the positions asked for reach the output head: `logits_positions` [B, k] picks
    // k rows of each sequence (GatherND over the batch), so logits are [B, k, vocabulary].
    let x = if select_logits {
        let last = b.g.const_i64(&[-1]);
        let at = b.g.op("Unsqueeze", &["logits_positions", &last], &[]);
        b.g.op("GatherND", &[&x, &at], &[("batch_dims", Attr::Int(1))])
    } else {
        x
    };
    let w = b.vector("output_norm.weight", "model.norm.weight")?;
    let xn = b.rms_norm(&x, &w);
    let logits = match head {
        Some(Head::Transposed(t)) => b.g.op("MatMul", &[&xn, &t], &[]),
        Some(Head::Quantized(w)) => b.matmul(&xn, w, "lm_head.weight", h, p.vocab_size),
        Some(Head::Own) => b.linear(
            &xn,
            "output.weight",
            "lm_head.weight",
            h,
            p.vocab_size,
            None,
        )?,
        None => unreachable!("a decoder has an output head"),
    };
    b.g.node_to("Identity", &[&logits], &["logits"], &[]);

    let mut inputs = vec![
        tensor(
            "input_ids".into(),
            DataType::Int64,
            vec![sym("batch_size"), sym("sequence_length")],
        ),
        tensor(
            "attention_mask".into(),
            DataType::Int64,
            vec![sym("batch_size"), sym("total_sequence_length")],
        ),
    ];
    if !genai {
        inputs.push(tensor(
            "position_ids".into(),
            DataType::Int64,
            vec![sym("batch_size"), sym("sequence_length")],
        ));
    }
    let logit_rows = if select_logits {
        inputs.push(tensor(
            "logits_positions".into(),
            DataType::Int64,
            vec![sym("batch_size"), sym("num_logits")],
        ));
        "num_logits"
    } else {
        "sequence_length"
    };
    let mut outputs = vec![tensor(
        "logits".into(),
        act,
        vec![
            sym("batch_size"),
            sym(logit_rows),
            Dim::Fixed(p.vocab_size as i64),
        ],
    )];
    let kv_dims = |len| {
        vec![
            sym("batch_size"),
            Dim::Fixed(nkv as i64),
            sym(len),
            Dim::Fixed(d as i64),
        ]
    };
    for i in 0..p.num_layers {
        for kv in ["key", "value"] {
            inputs.push(tensor(
                format!("past_key_values.{i}.{kv}"),
                act,
                kv_dims("past_sequence_length"),
            ));
            outputs.push(tensor(
                format!("present.{i}.{kv}"),
                act,
                kv_dims("total_sequence_length"),
            ));
        }
    }
    b.g.inputs = inputs;
    b.g.outputs = outputs;
    progress(total, total);
    Ok(b.g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_blocks_round_trip_within_half_a_step() {
        let (n, k) = (3, 64);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let (packed, scales, zeros) = quantize_int4(&w, n, k);
        assert_eq!(
            (packed.len(), scales.len(), zeros.len()),
            (n * k / 2, n * 2, n)
        );
        let back = dequantize_int4(&packed, &scales, &zeros, n, k);
        for (i, (b, v)) in back.iter().zip(&w).enumerate() {
            let scale = scales[i / 32];
            assert!((b - v).abs() <= scale * 0.5 + 1e-5, "[{i}]: {b} vs {v}");
        }
    }

    #[test]
    fn unpermute_inverts_the_llama_cpp_permutation() {
        // Two heads of dimension 4, one column: HF rows h*4 + s*2 + j hold value 100h+10s+j.
        let (heads, d) = (2, 4);
        let hf: Vec<f32> = (0..heads)
            .flat_map(|h| {
                (0..2).flat_map(move |s| (0..d / 2).map(move |j| (100 * h + 10 * s + j) as f32))
            })
            .collect();
        // llama.cpp stores row h*4 + 2j + s.
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..d / 2 {
                    gguf[h * d + 2 * j + s] = hf[h * d + s * (d / 2) + j];
                }
            }
        }
        assert_eq!(unpermute_rows(&gguf, heads, d, 1), hf);
    }
}
