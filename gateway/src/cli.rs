use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "safegate",
    version,
    about = "A safety-guarded LLM inference gateway"
)]
pub struct Cli {
    /// Path to libonnxruntime.so (else ORT_DYLIB_PATH, else ./.ort/lib from scripts/setup.sh).
    #[arg(long, env = "SAFEGATE_ORT_LIB", global = true)]
    pub ort_lib: Option<PathBuf>,
    /// Log filter (tracing syntax), e.g. info or safegate_engine=debug.
    #[arg(
        long,
        env = "SAFEGATE_LOG_LEVEL",
        default_value = "warn",
        global = true
    )]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the OpenAI-compatible, policy-enforcing HTTP API.
    Serve(ServeArgs),
    /// Generate a chat reply with a local model.
    Generate(GenerateArgs),
    /// Measure time to first token and decode speed of a local model.
    Bench(BenchArgs),
    /// Scan text or code for insecure patterns (Code Shield).
    Scan(ScanArgs),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Llama Guard prompts and classification.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Model folders.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// API keys for the config file.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Health check for containers: GET a URL, exit 0 on a 2xx answer, 1 otherwise.
    Probe {
        /// e.g. http://127.0.0.1:8080/readyz
        #[arg(default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// Convert a Llama-architecture GGUF file (llama.cpp, Ollama) into a model folder.
    ImportGguf {
        /// The .gguf file.
        file: PathBuf,
        /// The model folder to create (must not exist).
        out_dir: PathBuf,
        /// f32; f16 (half the disk size, computed in f32); or int4 (linear layers as 4-bit
        /// blocks for ONNX Runtime's MatMulNBits: smallest and fastest on CPU).
        #[arg(long, default_value = "f32")]
        weights: String,
        /// f32; or f16 with `--weights f16`: activations, KV cache and logits in half
        /// precision too, for CUDA (RMSNorm and softmax still in f32).
        #[arg(long, default_value = "f32")]
        compute: String,
        /// Cap the context length (rotary tables, max_position_embeddings).
        #[arg(long)]
        max_context: Option<usize>,
        /// Write an encoder of hidden states instead of the decoder: the residual stream after
        /// these layers (comma-separated; the last layer is the final normed output). This is
        /// what the embedded guard reads features from.
        #[arg(long, value_delimiter = ',')]
        encoder_layers: Option<Vec<usize>>,
        /// The decoder's graph: `optimum` (plain ONNX operators, `position_ids` an input) or
        /// `genai` (onnxruntime-genai's layout: one fused GroupQueryAttention per layer, far
        /// fewer kernel launches per token on CUDA).
        #[arg(long, default_value = "optimum")]
        layout: String,
        /// With `--layout genai`: Q, K and V as one matrix product (decode about 6% faster
        /// on an H200, prefill about 20% slower: docs/benchmarks.md).
        #[arg(long)]
        packed_qkv: bool,
        /// Logits for every position, as other runtimes expect. By default the decoder takes
        /// `logits_positions` and computes logits only where safegate reads them.
        #[arg(long)]
        all_logits: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct GuardPromptArgs {
    /// llama-guard-2 or llama-guard-3.
    #[arg(long, default_value = "llama-guard-2")]
    pub taxonomy: String,
    /// user (judge the prompt) or agent (judge the response).
    #[arg(long, default_value = "user")]
    pub agent_type: String,
    /// Only these categories, comma-separated (e.g. S1,S3); numbered S1..Sn in the prompt.
    #[arg(long, value_delimiter = ',')]
    pub categories: Option<Vec<String>>,
    /// Write each category's description under its name.
    #[arg(long)]
    pub with_descriptions: bool,
    /// An OpenAI-style JSON array of {role, content} (roles user/assistant).
    #[arg(long)]
    pub messages: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum GuardCommand {
    /// Print the exact Llama Guard prompt (no trailing newline).
    Prompt(GuardPromptArgs),
    /// Classify a conversation with a local Llama Guard model; prints a JSON verdict.
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        prompt: GuardPromptArgs,
    },
    /// Train the embedded guard's head on features of an encoder (see docs/guard.md).
    Train {
        /// JSON lines from scripts/guard/build_data.py.
        #[arg(long)]
        data: PathBuf,
        /// Encoder folder (`safegate models import-gguf --encoder-layers ...`).
        #[arg(long)]
        encoder: PathBuf,
        /// The head file to write (guard_head.json).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 20261127)]
        seed: u64,
        /// Tokens per window (training reads the last window of each text).
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Step between windows when scoring long texts.
        #[arg(long, default_value_t = 192)]
        stride: usize,
        /// The decision threshold is the best F1 on the validation split among those with
        /// at most this false positive rate there, averaged over the benign sources (each
        /// source's own rate; sources under 10 rows count as one).
        #[arg(long, default_value_t = 0.05)]
        max_fpr: f64,
        /// The same for the response head.
        #[arg(long, default_value_t = 0.08)]
        max_fpr_response: f64,
        /// The same for the prompt-attack head (trained when the data has `attack` rows).
        #[arg(long, default_value_t = 0.02)]
        max_fpr_attack: f64,
        /// How hidden states become features: `mean` (over positions) or `mean-and-last`
        /// (plus the last position's state, which has read the whole window).
        #[arg(long, default_value = "mean")]
        pooling: safegate_engine::Pooling,
        /// Text written around every window, `{text}` marking the window (special tokens
        /// recognised), e.g. the encoder's chat template around a user turn.
        #[arg(long)]
        wrap: Option<String>,
        /// Served heads also read a user's text one sentence at a time (sentences shorter
        /// than this many characters joined to the next), with a sentence head trained on
        /// the prompt rows and the data's `sentence` rows (sentences of benign documents,
        /// `build_attack_data.py` adds them).
        #[arg(long)]
        sentence_windows: Option<usize>,
        /// ONNX Runtime intra-op threads (0: ONNX Runtime's choice).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Latency and throughput of an embedded guard on synthetic texts.
    Bench {
        /// Embedded guard folder (encoder + guard_head.json).
        #[arg(long)]
        guard: PathBuf,
        /// Text lengths in tokens, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "50,500")]
        tokens: Vec<usize>,
        /// Concurrent callers, comma-separated (1: no batching possible).
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        clients: Vec<usize>,
        /// Classifications per (length, clients) after a warm-up.
        #[arg(long, default_value_t = 40)]
        runs: usize,
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Measure an embedded guard folder on splits of a data set; prints Markdown tables.
    Eval {
        #[arg(long)]
        data: PathBuf,
        /// Embedded guard folder (encoder + guard_head.json).
        #[arg(long)]
        guard: PathBuf,
        /// Splits to score, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "test,external")]
        splits: Vec<String>,
        /// Write per-row scores and the summary as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Concurrent callers (their windows are batched together).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate policy files (and a bindings.yaml) as one set; print a normalized summary.
    Check {
        /// Policy files; a folder means every .yaml/.yml file in it.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file (flags and environment override it; API keys live only there).
    #[arg(long, env = "SAFEGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SAFEGATE_LISTEN")]
    pub listen: Option<String>,
    /// Listen on a non-loopback address although no API keys are configured.
    #[arg(long)]
    pub allow_insecure_listen: bool,
    /// Chat model folder.
    #[arg(long, env = "SAFEGATE_MODEL")]
    pub model: Option<PathBuf>,
    /// Guard model folder (Llama Guard, or a model in its place).
    #[arg(long, env = "SAFEGATE_GUARD_MODEL")]
    pub guard_model: Option<PathBuf>,
    /// Prompt Guard folder (model.onnx, tokenizer.json, config.json: Prompt Guard v1 or 2
    /// exported to ONNX) for the policies' prompt_attack stage, in place of the embedded
    /// guard's attack head.
    #[arg(long, env = "SAFEGATE_PROMPT_GUARD")]
    pub prompt_guard: Option<PathBuf>,
    /// Policy files or folders (default: the shipped presets, `default` for everyone).
    #[arg(long, env = "SAFEGATE_POLICIES", value_delimiter = ',')]
    pub policies: Option<Vec<PathBuf>>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// ONNX Runtime I/O binding for the chat model: keep the KV cache on the provider's
    /// device (auto: on CUDA, and on the CPU where KV buffers can be shared; on; off)
    /// [default: auto].
    #[arg(long)]
    pub io_binding: Option<String>,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime's choice) [default: 0].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Requests waiting for the engine; beyond it, 429 with Retry-After [default: 64].
    #[arg(long)]
    pub queue: Option<usize>,
    /// Largest request body accepted [default: 2 MiB].
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
    /// A file holding the bearer token for the admin endpoints (policy reload), or set
    /// SAFEGATE_ADMIN_KEY; neither (and no admin_key_sha256 in the config) disables them.
    /// Never a flag: command lines are visible to every user of the machine (`ps`).
    #[arg(long)]
    pub admin_key_file: Option<PathBuf>,
    /// Refused: a secret on the command line shows in `ps` (use the file or the variable).
    #[arg(long, hide = true)]
    pub admin_key: Option<String>,
    /// Audit log (one JSON line per request): a file, `stdout` (for a container's log
    /// agent; the server's own log is on stderr), or `off` [default: safegate-audit.jsonl].
    #[arg(long, env = "SAFEGATE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Rotate the audit log past this size (FILE -> FILE.000001, FILE.000002, ...)
    /// [default: 100 MiB].
    #[arg(long)]
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit files to keep, the oldest removed past it (each removal logged)
    /// [default: 0, keep all].
    #[arg(long)]
    pub audit_keep: Option<usize>,
    /// Do not fsync each audit line (faster; a crash may lose the last lines).
    #[arg(long)]
    pub no_audit_fsync: bool,
    /// How often the policy files are checked for changes, in ms [default: 1000].
    #[arg(long)]
    pub policy_poll_ms: Option<u64>,
    /// Serve /metrics and /readyz on this ADDR:PORT only (e.g. a port only the cluster's
    /// Prometheus and probes reach), not beside the API [default: with the API].
    #[arg(long, env = "SAFEGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a new random API key; prints the key once and the config entry with its hash.
    New {
        /// The key's id (for logs and the audit log).
        #[arg(long)]
        id: String,
        /// Its group (bindings.yaml maps groups to policies).
        #[arg(long)]
        group: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Scan every block as this language (c, cpp, csharp, java, javascript, typescript, php,
    /// python, rust, go, ruby, kotlin, swift, bash; aliases such as py, js, c++ work).
    #[arg(long)]
    pub language: Option<String>,
    /// Print one JSON object with findings and blocks.
    #[arg(long)]
    pub json: bool,
    /// Input file, or - for standard input (the default).
    #[arg(default_value = "-")]
    pub file: String,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model folder (model.onnx, tokenizer.json, tokenizer_config.json, config.json or genai_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// ONNX Runtime I/O binding: keep the KV cache on the provider's device (auto: on CUDA,
    /// and on the CPU where KV buffers can be shared; on; off).
    #[arg(long, default_value = "auto")]
    pub io_binding: String,
    /// With I/O binding, give each step a new, grown KV tensor even where the graph
    /// (GroupQueryAttention) can update one shared buffer per layer in place: for measuring
    /// what sharing saves.
    #[arg(long)]
    pub growing_kv: bool,
    /// ONNX Runtime intra-op threads (0: ONNX Runtime's choice).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "messages"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One user message.
    #[arg(long)]
    pub prompt: Option<String>,
    /// An OpenAI-style JSON array of {role, content}.
    #[arg(long)]
    pub messages: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables the top-k cut.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Hold the reply to any JSON object (as `response_format: json_object`).
    #[arg(long, conflicts_with = "json_schema")]
    pub json_object: bool,
    /// Hold the reply to the JSON Schema in this file (as `response_format: json_schema`).
    #[arg(long, value_name = "FILE.json")]
    pub json_schema: Option<std::path::PathBuf>,
    /// One JSON object per token, then a summary line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Measured runs (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Also time the prefill of a prompt of this many tokens (time to first token, same
    /// runs), with the model loaded once: a large model's load can outlast both measures.
    #[arg(long)]
    pub prefill_tokens: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}
