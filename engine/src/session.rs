//! One ONNX Runtime session of a Llama-family decoder and its KV-cache step. A session takes
//! `&mut self` to run, so each one is owned by exactly one worker thread.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{Session, SessionInputValue, SessionOutputs};
use ort::value::{DynTensor, DynValue, Tensor, TensorElementType, ValueType};

use crate::error::{EngineError, Result};
use crate::model::{recognise_layout, GraphSignature, Layout, ModelConfig};

/// `--device auto|cpu|cuda[:N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda(u32),
}

impl FromStr for Device {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    EngineError::InvalidRequest(format!(
                        "unknown device `{s}`: expected auto, cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The execution provider a session really runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

/// `--io-binding auto|on|off`: how a decoder's inputs and outputs reach ONNX Runtime.
///
/// With I/O binding the KV cache's `present` outputs are allocated on the execution
/// provider's device and bound, there, as the next step's `past` inputs; only the logits are
/// copied to host memory. On CUDA this keeps the cache on the GPU, where the plain path
/// copies every layer's keys and values to the host and back at each token. On the CPU both
/// paths move the same tensors (the plain one hands the outputs back as inputs without a
/// copy), except where the graph's GroupQueryAttention can write into one shared buffer per
/// layer (measured 5-20% faster per token on SmolLM2-135M, docs/benchmarks.md). So `auto`
/// binds on CUDA, and on the CPU where the KV buffers are shared; `on` binds on the CPU in
/// any case (its parity tests run there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoBindingMode {
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for IoBindingMode {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(IoBindingMode::Auto),
            "on" => Ok(IoBindingMode::On),
            "off" => Ok(IoBindingMode::Off),
            _ => Err(EngineError::InvalidRequest(format!(
                "unknown I/O binding mode `{s}`: expected auto, on or off"
            ))),
        }
    }
}

impl IoBindingMode {
    /// Whether a session on `provider` binds its inputs and outputs, before knowing whether
    /// its KV buffers can be shared (`auto` on the CPU tries, and keeps the binding only if
    /// they can).
    pub fn binds(self, provider: Provider, layout: Layout) -> bool {
        match self {
            IoBindingMode::Auto => provider == Provider::Cuda || layout == Layout::Genai,
            IoBindingMode::On => true,
            IoBindingMode::Off => false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub device: Device,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    pub io_binding: IoBindingMode,
    /// Keep growing KV tensors (a new present per step) even where the graph could share
    /// one buffer per layer: for measuring what sharing saves.
    pub growing_kv: bool,
}

/// Where a bound session's outputs go: the KV cache stays on the provider's device, the
/// logits come to host memory.
struct BoundMemory {
    kv: MemoryInfo<'static>,
    host: MemoryInfo<'static>,
}

impl BoundMemory {
    fn new(provider: Provider, device: Device) -> Result<Self> {
        let ort = |e: ort::Error| EngineError::Ort(e.to_string());
        let kv = match (provider, device) {
            (Provider::Cuda, Device::Cuda(n)) => MemoryInfo::new(
                AllocationDevice::CUDA,
                n as i32,
                AllocatorType::Device,
                MemoryType::Default,
            ),
            (Provider::Cuda, _) => MemoryInfo::new(
                AllocationDevice::CUDA,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            ),
            (Provider::Cpu, _) => MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            ),
        }
        .map_err(ort)?;
        let host = MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::CPUOutput,
        )
        .map_err(ort)?;
        Ok(Self { kv, host })
    }
}

/// The outputs of one run, moved out of ONNX Runtime's list: the logits and the KV outputs,
/// under names borrowed from the graph's signature (nothing allocated per token for them).
struct RunOutputs<'n>(Vec<(&'n str, DynValue)>);

impl<'n> RunOutputs<'n> {
    fn collect(mut outputs: SessionOutputs<'_>, names: &[&'n str]) -> Result<Self> {
        names
            .iter()
            .map(|&name| {
                outputs
                    .remove(name)
                    .map(|v| (name, v))
                    .ok_or_else(|| EngineError::Ort(format!("the model returned no `{name}`")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Self)
    }

    fn get(&self, name: &str) -> Result<&DynValue> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| EngineError::Ort(format!("the model returned no `{name}`")))
    }

    fn take(&mut self, name: &str) -> Result<DynValue> {
        let at = self
            .0
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| EngineError::Ort(format!("the model returned no `{name}`")))?;
        Ok(self.0.swap_remove(at).1)
    }
}

/// Runs `session` once, plainly or through an I/O binding (`bound`), and returns the logits
/// and every KV output by name. With `shared` KV buffers (bound sessions of a
/// GroupQueryAttention graph), each layer's buffer is bound as both its past input and its
/// present output: the attention writes the new positions in place and nothing is copied;
/// only the logits come back.
fn run_decoder<'s>(
    session: &mut Session,
    bound: Option<&BoundMemory>,
    signature: &'s GraphSignature,
    inputs: Vec<(Cow<'_, str>, DynValue)>,
    shared: Option<&mut [DynValue]>,
) -> Result<RunOutputs<'s>> {
    let mut names: Vec<&'s str> = Vec::with_capacity(1 + signature.kv_outputs.len() * 2);
    names.push("logits");
    if shared.is_none() {
        for (k, v) in &signature.kv_outputs {
            names.push(k);
            names.push(v);
        }
    }
    match (bound, shared) {
        (Some(memory), Some(buffers)) => {
            let mut binding = session.create_binding()?;
            for (name, value) in &inputs {
                binding.bind_input(name.as_ref(), value)?;
            }
            binding.bind_output_to_device("logits", &memory.host)?;
            let pairs = signature.kv_inputs.iter().zip(&signature.kv_outputs);
            for (((k_in, v_in), (k_out, v_out)), kv) in pairs.zip(buffers.chunks_mut(2)) {
                binding.bind_input(k_in.as_str(), &kv[0])?;
                binding.bind_input(v_in.as_str(), &kv[1])?;
                binding.bind_output(k_out.as_str(), &mut kv[0])?;
                binding.bind_output(v_out.as_str(), &mut kv[1])?;
            }
            let outputs = session.run_binding(&binding)?;
            RunOutputs::collect(outputs, &names)
        }
        (None, Some(_)) => Err(EngineError::Ort(
            "shared KV buffers need an I/O-bound session".into(),
        )),
        (None, None) => {
            let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                inputs.into_iter().map(|(n, v)| (n, v.into())).collect();
            RunOutputs::collect(session.run(inputs)?, &names)
        }
        (Some(memory), None) => {
            let mut binding = session.create_binding()?;
            for (name, value) in &inputs {
                binding.bind_input(name.as_ref(), value)?;
            }
            binding.bind_output_to_device("logits", &memory.host)?;
            for name in &names[1..] {
                binding.bind_output_to_device(*name, &memory.kv)?;
            }
            // A fresh binding per run: its outputs are allocated for this run alone, so the
            // values handed back are never overwritten by a later step.
            let outputs = session.run_binding(&binding)?;
            RunOutputs::collect(outputs, &names)
        }
    }
}

fn builder(opts: &SessionOptions) -> Result<ort::session::builder::SessionBuilder> {
    let env = crate::runtime::environment()?;
    let mut b = Session::builder(env)?;
    if opts.intra_threads > 0 {
        b = b
            .with_intra_threads(opts.intra_threads)
            .map_err(|e| EngineError::Ort(e.to_string()))?;
    }
    Ok(b)
}

#[cfg(feature = "cuda")]
fn with_cuda(
    b: ort::session::builder::SessionBuilder,
    device: u32,
) -> Result<ort::session::builder::SessionBuilder> {
    let ep = ort::ep::CUDA::default()
        .with_device_id(device as i32)
        .build()
        .error_on_failure();
    b.with_execution_providers([ep])
        .map_err(|e| EngineError::ExecutionProvider(format!("CUDA device {device}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _b: ort::session::builder::SessionBuilder,
    _device: u32,
) -> Result<ort::session::builder::SessionBuilder> {
    Err(EngineError::ExecutionProvider(
        "this safegate was built without CUDA support (rebuild with `--features cuda`)".into(),
    ))
}

/// Opens `model` on the requested device. `cuda` that cannot be registered is an error;
/// `auto` falls back to the CPU with a warning.
pub fn open_session(model: &Path, opts: &SessionOptions) -> Result<(Session, Provider)> {
    let commit = |mut b: ort::session::builder::SessionBuilder| {
        b.commit_from_file(model).map_err(|e| EngineError::Model {
            path: model.to_path_buf(),
            message: format!("ONNX Runtime cannot load it: {e}"),
        })
    };
    match opts.device {
        Device::Cpu => Ok((commit(builder(opts)?)?, Provider::Cpu)),
        Device::Cuda(n) => Ok((commit(with_cuda(builder(opts)?, n)?)?, Provider::Cuda)),
        Device::Auto if cfg!(feature = "cuda") => match with_cuda(builder(opts)?, 0) {
            Ok(b) => Ok((commit(b)?, Provider::Cuda)),
            Err(e) => {
                tracing::warn!("CUDA is not available ({e}); running on the CPU");
                Ok((commit(builder(opts)?)?, Provider::Cpu))
            }
        },
        Device::Auto => {
            tracing::warn!(
                "--device auto: this safegate was built without CUDA support (--features cuda); running on the CPU"
            );
            Ok((commit(builder(opts)?)?, Provider::Cpu))
        }
    }
}

/// Why a model asked to run on `device` ended up on `provider`, when `auto` fell back to
/// the CPU (for `/readyz`; the start-up log has the details).
pub fn fallback_reason(device: Device, provider: Provider) -> Option<String> {
    match (device, provider) {
        (Device::Auto, Provider::Cpu) if cfg!(feature = "cuda") => {
            Some("--device auto: CUDA is not available here; running on the CPU".into())
        }
        (Device::Auto, Provider::Cpu) => Some(
            "--device auto: built without CUDA support (--features cuda); running on the CPU"
                .into(),
        ),
        _ => None,
    }
}

/// Key/value tensors of every layer, in the order key0, value0, key1, value1, ...
pub struct KvCache {
    values: Vec<DynValue>,
    len: usize,
    /// `Some(positions)`: the tensors are fixed buffers of that many positions, written in
    /// place (shared past/present); `None`: each run returns grown tensors.
    capacity: Option<usize>,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold (`None`: it grows with every run).
    pub fn capacity(&self) -> Option<usize> {
        self.capacity
    }
}

/// A decoder session with its recognised signature.
pub struct DecoderSession {
    session: Session,
    bound: Option<BoundMemory>,
    signature: GraphSignature,
    kv_type: TensorElementType,
    num_kv_heads: usize,
    head_dim: usize,
    /// Allocates shared past/present KV buffers on the provider's device, when this session
    /// uses them (I/O-bound, and the graph's attention writes its cache in place).
    kv_buffers: Option<Allocator>,
    pub provider: Provider,
}

impl DecoderSession {
    pub fn open(
        dir: &Path,
        onnx: &Path,
        config: &ModelConfig,
        opts: &SessionOptions,
    ) -> Result<Self> {
        let (session, provider) = open_session(onnx, opts)?;
        let inputs: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let signature = recognise_layout(dir, &inputs, &outputs, config.num_layers)?;
        let kv_type = session
            .inputs()
            .iter()
            .find(|i| i.name() == signature.kv_inputs[0].0)
            .and_then(|i| match i.dtype() {
                ValueType::Tensor { ty, .. } => Some(*ty),
                _ => None,
            })
            .unwrap_or(TensorElementType::Float32);
        if !matches!(
            kv_type,
            TensorElementType::Float32 | TensorElementType::Float16
        ) {
            return Err(EngineError::UnsupportedLayout {
                path: dir.to_path_buf(),
                message: format!("KV cache element type {kv_type:?}; expected float32 or float16"),
            });
        }
        let bound = if opts.io_binding.binds(provider, signature.layout) {
            Some(BoundMemory::new(provider, opts.device)?)
        } else {
            None
        };
        let mut decoder = Self {
            session,
            bound,
            signature,
            kv_type,
            num_kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            kv_buffers: None,
            provider,
        };
        if !opts.growing_kv {
            decoder.kv_buffers = decoder.try_shared_buffers(dir);
        }
        // On the CPU, binding pays only through shared buffers.
        if opts.io_binding == IoBindingMode::Auto
            && provider == Provider::Cpu
            && decoder.kv_buffers.is_none()
        {
            decoder.bound = None;
        }
        Ok(decoder)
    }

    /// Shared past/present buffers, where the graph takes them. onnxruntime-genai's layout
    /// runs attention in `com.microsoft.GroupQueryAttention`, which writes new positions
    /// into a past buffer that is also its present output (it compares the two pointers)
    /// and reads the real lengths from the attention mask; one layer's cache then lives in
    /// one buffer for the whole sequence, and no step copies it. Whether a graph does is
    /// found by running one token into a two-position buffer: any other attention (past and
    /// new concatenated) returns a present longer than the buffer, which ONNX Runtime
    /// refuses, and the session keeps its growing tensors.
    fn try_shared_buffers(&mut self, dir: &Path) -> Option<Allocator> {
        let memory = self.bound.as_ref()?;
        if self.signature.layout != Layout::Genai {
            return None;
        }
        let allocator = match Allocator::new(&self.session, memory.kv.clone()) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(model = %dir.display(), error = %e, "no allocator for shared KV buffers; the KV cache grows per step");
                return None;
            }
        };
        self.kv_buffers = Some(allocator);
        let probe = self
            .cache_for(2)
            .and_then(|cache| self.forward_with(&[0], cache, |_| ()));
        let allocator = self.kv_buffers.take();
        match probe {
            Ok(_) => allocator,
            Err(e) => {
                tracing::info!(model = %dir.display(), error = %e, "the graph does not update its KV cache in place; it grows per step");
                None
            }
        }
    }

    /// Whether this session's KV caches are shared past/present buffers.
    pub fn shares_kv(&self) -> bool {
        self.kv_buffers.is_some()
    }

    /// A cache for a sequence that will hold at most `positions` positions: fixed buffers
    /// of that size where the session shares them, else an empty growing cache.
    pub fn cache_for(&self, positions: usize) -> Result<KvCache> {
        let Some(allocator) = &self.kv_buffers else {
            return self.empty_cache();
        };
        let positions = positions.max(1);
        let shape = [1, self.num_kv_heads, positions, self.head_dim];
        let mut values = Vec::with_capacity(self.signature.kv_inputs.len() * 2);
        for _ in 0..self.signature.kv_inputs.len() * 2 {
            values.push(DynTensor::new(allocator, self.kv_type, shape)?.into_dyn());
        }
        Ok(KvCache {
            values,
            len: 0,
            capacity: Some(positions),
        })
    }

    pub fn layout(&self) -> Layout {
        self.signature.layout
    }

    /// Whether this session runs through ONNX Runtime's I/O binding.
    pub fn io_bound(&self) -> bool {
        self.bound.is_some()
    }

    pub fn empty_cache(&self) -> Result<KvCache> {
        self.empty_cache_for(1)
    }

    fn empty_cache_for(&self, batch: usize) -> Result<KvCache> {
        let shape = [batch, self.num_kv_heads, 0, self.head_dim];
        let mut values = Vec::with_capacity(self.signature.kv_inputs.len() * 2);
        for _ in 0..self.signature.kv_inputs.len() * 2 {
            let v: DynValue = match self.kv_type {
                TensorElementType::Float16 => {
                    Tensor::<half::f16>::from_array((shape, Vec::new()))?.into_dyn()
                }
                _ => Tensor::<f32>::from_array((shape, Vec::new()))?.into_dyn(),
            };
            values.push(v);
        }
        Ok(KvCache {
            values,
            len: 0,
            capacity: None,
        })
    }

    /// Runs several sequences from an empty cache as one right-padded batch and copies the
    /// logits at the wanted positions of each row: `wanted[r]` indexes into `rows[r]`.
    /// Right padding keeps every real position's attention what it is alone: causal
    /// attention never looks ahead at the padding, and padding positions still see their
    /// row's real tokens (no empty softmax). The mask marks the padding all the same.
    ///
    /// Returns `Ok(None)` when the graph gives logits for the last position only (some
    /// exports do): the caller then needs the step-by-step path.
    pub fn prefill_batch(
        &mut self,
        rows: &[&[u32]],
        wanted: &[Range<usize>],
    ) -> Result<Option<Vec<Vec<Vec<f32>>>>> {
        let b = rows.len();
        let s = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if b == 0 || s == 0 || rows.iter().any(|r| r.is_empty()) || wanted.len() != b {
            return Err(EngineError::InvalidRequest(
                "cannot score an empty sequence".into(),
            ));
        }
        if let Some((r, _)) = wanted
            .iter()
            .enumerate()
            .find(|(r, w)| w.is_empty() || w.end > rows[*r].len())
        {
            return Err(EngineError::InvalidRequest(format!(
                "row {r}: the positions asked for are outside the sequence"
            )));
        }
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        let mut pos = vec![0i64; b * s];
        for (r, row) in rows.iter().enumerate() {
            for c in 0..s {
                pos[r * s + c] = c as i64;
            }
            for (c, &t) in row.iter().enumerate() {
                ids[r * s + c] = t as i64;
                mask[r * s + c] = 1;
            }
        }
        let mut inputs: Vec<(Cow<'_, str>, DynValue)> =
            Vec::with_capacity(3 + self.signature.kv_inputs.len() * 2);
        inputs.push((
            "input_ids".into(),
            Tensor::<i64>::from_array(([b, s], ids))?.into_dyn(),
        ));
        inputs.push((
            "attention_mask".into(),
            Tensor::<i64>::from_array(([b, s], mask))?.into_dyn(),
        ));
        if self.signature.layout == Layout::Optimum {
            inputs.push((
                "position_ids".into(),
                Tensor::<i64>::from_array(([b, s], pos))?.into_dyn(),
            ));
        }
        // With `logits_positions`, row r's logits come back for its wanted positions only
        // (k per row, the shorter ranges padded with their last position); else for all s.
        let (rows_out, first): (usize, Vec<usize>) = if self.signature.selects_logits {
            let k = wanted.iter().map(|w| w.len()).max().unwrap_or(1);
            let picked: Vec<i64> = wanted
                .iter()
                .flat_map(|w| (0..k).map(move |j| (w.start + j.min(w.len() - 1)) as i64))
                .collect();
            inputs.push((
                "logits_positions".into(),
                Tensor::<i64>::from_array(([b, k], picked))?.into_dyn(),
            ));
            (k, wanted.iter().map(|w| w.start).collect())
        } else {
            (s, vec![0; b])
        };
        let mut values = self.empty_cache_for(b)?.values.into_iter();
        for (k, v) in &self.signature.kv_inputs {
            let kt = values.next().expect("cache has one tensor per input");
            let vt = values.next().expect("cache has one tensor per input");
            inputs.push((k.as_str().into(), kt));
            inputs.push((v.as_str().into(), vt));
        }
        let outputs = run_decoder(
            &mut self.session,
            self.bound.as_ref(),
            &self.signature,
            inputs,
            None,
        )?;
        let logits = outputs.get("logits")?;
        // Logits of the positions run or picked, [batch, rows_out, vocabulary], or nothing to
        // read here (a graph that returns the last position only).
        let per_position = |shape: &[i64], len: usize| -> Option<usize> {
            let vocab = *shape.last()? as usize;
            let full = shape.len() == 3
                && shape[0] as usize == b
                && shape[1] as usize == rows_out
                && len == b * rows_out * vocab;
            full.then_some(vocab)
        };
        // Position c of row r is logits row r * rows_out + (c - first[r]).
        let gather = |vocab: usize, each: &mut dyn FnMut(usize) -> Vec<f32>| {
            wanted
                .iter()
                .enumerate()
                .map(|(r, range)| {
                    range
                        .clone()
                        .map(|c| each((r * rows_out + c - first[r]) * vocab))
                        .collect()
                })
                .collect::<Vec<Vec<Vec<f32>>>>()
        };
        let out = match logits.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            } => {
                let (shape, data) = logits.try_extract_tensor::<half::f16>()?;
                let Some(vocab) = per_position(shape, data.len()) else {
                    return Ok(None);
                };
                gather(vocab, &mut |at| {
                    data[at..at + vocab].iter().map(|v| v.to_f32()).collect()
                })
            }
            _ => {
                let (shape, data) = logits.try_extract_tensor::<f32>()?;
                let Some(vocab) = per_position(shape, data.len()) else {
                    return Ok(None);
                };
                gather(vocab, &mut |at| data[at..at + vocab].to_vec())
            }
        };
        Ok(Some(out))
    }

    /// Runs `ids` (batch of one) after the cached positions. Copies the logits of the last
    /// position into `logits_out` and returns the grown cache.
    pub fn forward(
        &mut self,
        ids: &[u32],
        cache: KvCache,
        logits_out: &mut Vec<f32>,
    ) -> Result<KvCache> {
        self.forward_with(ids, cache, |logits| {
            logits_out.clear();
            logits_out.extend_from_slice(logits);
        })
        .map(|(cache, ())| cache)
    }

    /// Runs `ids` (batch of one) after the cached positions and hands the logits of the last
    /// position to `look` without copying them (float16 logits are converted). The cache's
    /// tensors move from outputs to inputs; nothing is copied on our side.
    pub fn forward_with<R>(
        &mut self,
        ids: &[u32],
        cache: KvCache,
        look: impl FnOnce(&[f32]) -> R,
    ) -> Result<(KvCache, R)> {
        let n = ids.len();
        let total = cache.len + n;
        if let Some(capacity) = cache.capacity {
            if total > capacity {
                return Err(EngineError::InvalidRequest(format!(
                    "{total} positions do not fit the sequence's KV cache of {capacity}"
                )));
            }
        }
        let ids_t = Tensor::<i64>::from_array((
            [1usize, n],
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        ))?;
        let mask_t = Tensor::<i64>::from_array(([1usize, total], vec![1i64; total]))?;
        let mut inputs: Vec<(Cow<'_, str>, DynValue)> = Vec::with_capacity(3 + cache.values.len());
        inputs.push(("input_ids".into(), ids_t.into_dyn()));
        inputs.push(("attention_mask".into(), mask_t.into_dyn()));
        if self.signature.layout == Layout::Optimum {
            let pos: Vec<i64> = (cache.len as i64..total as i64).collect();
            inputs.push((
                "position_ids".into(),
                Tensor::<i64>::from_array(([1usize, n], pos))?.into_dyn(),
            ));
        }
        if self.signature.selects_logits {
            // The next token's logits: the last position of this run only.
            inputs.push((
                "logits_positions".into(),
                Tensor::<i64>::from_array(([1usize, 1], vec![n as i64 - 1]))?.into_dyn(),
            ));
        }
        let KvCache {
            values: mut buffers,
            capacity,
            ..
        } = cache;
        if capacity.is_none() {
            let mut values = std::mem::take(&mut buffers).into_iter();
            for (k, v) in &self.signature.kv_inputs {
                let kt = values.next().expect("cache has one tensor per input");
                let vt = values.next().expect("cache has one tensor per input");
                inputs.push((k.as_str().into(), kt));
                inputs.push((v.as_str().into(), vt));
            }
        }
        let mut outputs = run_decoder(
            &mut self.session,
            self.bound.as_ref(),
            &self.signature,
            inputs,
            capacity.is_some().then_some(buffers.as_mut_slice()),
        )?;
        let logits = outputs.get("logits")?;
        let looked = match logits.dtype() {
            ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            } => {
                let (shape, data) = logits.try_extract_tensor::<half::f16>()?;
                let vocab = *shape.last().unwrap_or(&0) as usize;
                let converted: Vec<f32> = data[data.len() - vocab..]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                look(&converted)
            }
            _ => {
                let (shape, data) = logits.try_extract_tensor::<f32>()?;
                let vocab = *shape.last().unwrap_or(&0) as usize;
                look(&data[data.len() - vocab..])
            }
        };
        if capacity.is_none() {
            for (k, v) in &self.signature.kv_outputs {
                buffers.push(outputs.take(k)?);
                buffers.push(outputs.take(v)?);
            }
        }
        Ok((
            KvCache {
                values: buffers,
                len: total,
                capacity,
            },
            looked,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<Device>().unwrap(), Device::Auto);
        assert!(fallback_reason(Device::Auto, Provider::Cpu).is_some());
        assert!(fallback_reason(Device::Auto, Provider::Cuda).is_none());
        assert!(fallback_reason(Device::Cpu, Provider::Cpu).is_none());
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }
}
