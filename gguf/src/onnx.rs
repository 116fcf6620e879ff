//! A small ONNX writer: the protobuf wire format of the handful of messages a decoder graph
//! needs (onnx.proto3 field numbers), and a graph builder. Large weights go to an external
//! data file, so there is no 2 GB protobuf limit.

use std::io::Write;

/// ONNX tensor element types used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Float = 1,
    Uint8 = 2,
    Int32 = 6,
    Int64 = 7,
    Bool = 9,
    Float16 = 10,
}

/// Protobuf wire encoding.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn message(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }

    fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

/// A tensor stored in the graph (small) or in the external data file (large).
pub struct Initializer {
    pub name: String,
    pub dims: Vec<i64>,
    pub dtype: DataType,
    pub data: TensorData,
}

pub enum TensorData {
    Inline(Vec<u8>),
    External { offset: u64, length: u64 },
}

/// The external data file, written as tensors are added (the weights of a large model
/// never sit in memory all at once).
struct ExternalData {
    file_name: String,
    writer: std::io::BufWriter<std::fs::File>,
    offset: u64,
    threshold: usize,
}

/// A graph input or output: element type and dimensions (a name is a symbolic one).
pub struct ValueInfo {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<Dim>,
}

pub enum Dim {
    Fixed(i64),
    Symbol(&'static str),
}

#[derive(Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    counter: usize,
    external: Option<ExternalData>,
    error: Option<std::io::Error>,
}

impl Graph {
    /// Tensors of `threshold` bytes or more go to `dir/file_name` (page-aligned) as they
    /// are added; `model.onnx` refers to them.
    pub fn with_external_data(
        dir: &std::path::Path,
        file_name: &str,
        threshold: usize,
    ) -> std::io::Result<Self> {
        let file = std::fs::File::create(dir.join(file_name))?;
        Ok(Self {
            external: Some(ExternalData {
                file_name: file_name.into(),
                writer: std::io::BufWriter::with_capacity(1 << 20, file),
                offset: 0,
                threshold,
            }),
            ..Self::default()
        })
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Adds a node with one fresh output; returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(op);
        self.node_to(op, inputs, &[&out], attrs);
        out
    }

    /// Casts `x` to `to` (an ONNX `Cast`); returns the output's name.
    pub fn cast(&mut self, x: &str, to: DataType) -> String {
        self.op("Cast", &[x], &[("to", Attr::Int(to as i64))])
    }

    /// Adds a node of another operator domain (e.g. `com.microsoft`) with one fresh output.
    pub fn op_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
    ) -> String {
        let out = self.fresh(op);
        self.node_in(domain, op, inputs, &[&out], attrs);
        out
    }

    /// Adds a node of another operator domain with named outputs.
    pub fn node_in(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: &[(&str, Attr)],
    ) {
        self.node_to(op, inputs, outputs, attrs);
        if let Some(node) = self.nodes.last_mut() {
            node.domain = domain.into();
        }
    }

    /// Adds a node with named outputs.
    pub fn node_to(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        self.nodes.push(Node {
            op: op.into(),
            domain: String::new(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        });
    }

    /// Adds a node with `n` fresh outputs.
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        n: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<String> {
        let outs: Vec<String> = (0..n).map(|_| self.fresh(op)).collect();
        let refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        self.node_to(op, inputs, &refs, attrs);
        outs
    }

    pub fn init(&mut self, name: &str, dims: &[i64], dtype: DataType, data: Vec<u8>) -> String {
        let data = match &mut self.external {
            Some(ext) if data.len() >= ext.threshold => {
                let written = (|| {
                    let pad = ext.offset.next_multiple_of(4096) - ext.offset;
                    ext.writer.write_all(&vec![0; pad as usize])?;
                    ext.writer.write_all(&data)?;
                    Ok::<_, std::io::Error>(pad)
                })();
                match written {
                    Ok(pad) => {
                        let offset = ext.offset + pad;
                        ext.offset = offset + data.len() as u64;
                        TensorData::External {
                            offset,
                            length: data.len() as u64,
                        }
                    }
                    Err(e) => {
                        // Reported by `write`, which is always called at the end.
                        self.error.get_or_insert(e);
                        TensorData::Inline(Vec::new())
                    }
                }
            }
            _ => TensorData::Inline(data),
        };
        self.initializers.push(Initializer {
            name: name.into(),
            dims: dims.to_vec(),
            dtype,
            data,
        });
        name.into()
    }

    pub fn init_f32(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, DataType::Float, data)
    }

    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const");
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(&name, &[values.len() as i64], DataType::Int64, data)
    }

    pub fn scalar_i64(&mut self, v: i64) -> String {
        let name = self.fresh("const");
        self.init(&name, &[], DataType::Int64, v.to_le_bytes().to_vec())
    }

    pub fn scalar_f32(&mut self, v: f32) -> String {
        let name = self.fresh("const");
        self.init(&name, &[], DataType::Float, v.to_le_bytes().to_vec())
    }

    /// Finishes the external data file (synced) and writes `dir/model.onnx`.
    pub fn write(mut self, dir: &std::path::Path, opsets: &[(&str, i64)]) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut data_file = String::new();
        if let Some(ext) = self.external.take() {
            data_file = ext.file_name;
            ext.writer
                .into_inner()
                .map_err(|e| e.into_error())?
                .sync_all()?;
        }
        let mut graph = Pb::default();
        for n in &self.nodes {
            graph.message(1, encode_node(n));
        }
        graph.string(2, "main");
        for t in &self.initializers {
            let mut pb = Pb::default();
            for d in &t.dims {
                pb.int(1, *d);
            }
            pb.int(2, t.dtype as i64);
            pb.string(8, &t.name);
            match &t.data {
                TensorData::Inline(bytes) => pb.bytes(9, bytes),
                TensorData::External { offset, length } => {
                    for (k, v) in [
                        ("location", data_file.clone()),
                        ("offset", offset.to_string()),
                        ("length", length.to_string()),
                    ] {
                        let mut entry = Pb::default();
                        entry.string(1, k);
                        entry.string(2, &v);
                        pb.message(13, entry);
                    }
                    pb.int(14, 1);
                }
            }
            graph.message(5, pb);
        }
        for (field, infos) in [(11, &self.inputs), (12, &self.outputs)] {
            for v in infos {
                graph.message(field, encode_value_info(v));
            }
        }
        let mut model = Pb::default();
        model.int(1, 9); // IR version 9 (ONNX 1.15+)
        model.string(2, "safegate-gguf");
        for (domain, version) in opsets {
            let mut op = Pb::default();
            op.string(1, domain);
            op.int(2, *version);
            model.message(8, op);
        }
        model.message(7, graph);
        let mut f = std::fs::File::create(dir.join("model.onnx"))?;
        f.write_all(&model.0)?;
        f.sync_all()
    }
}

fn encode_node(n: &Node) -> Pb {
    let mut pb = Pb::default();
    for i in &n.inputs {
        pb.string(1, i);
    }
    for o in &n.outputs {
        pb.string(2, o);
    }
    pb.string(3, &n.outputs[0]);
    pb.string(4, &n.op);
    for (name, attr) in &n.attrs {
        let mut a = Pb::default();
        a.string(1, name);
        match attr {
            Attr::Float(f) => {
                a.float(2, *f);
                a.int(20, 1);
            }
            Attr::Int(i) => {
                a.int(3, *i);
                a.int(20, 2);
            }
            Attr::Ints(v) => {
                for i in v {
                    a.int(8, *i);
                }
                a.int(20, 7);
            }
        }
        pb.message(5, a);
    }
    if !n.domain.is_empty() {
        pb.string(7, &n.domain);
    }
    pb
}

fn encode_value_info(v: &ValueInfo) -> Pb {
    let mut shape = Pb::default();
    for d in &v.dims {
        let mut dim = Pb::default();
        match d {
            Dim::Fixed(n) => dim.int(1, *n),
            Dim::Symbol(s) => dim.string(2, s),
        }
        shape.message(1, dim);
    }
    let mut tensor = Pb::default();
    tensor.int(1, v.dtype as i64);
    tensor.message(2, shape);
    let mut ty = Pb::default();
    ty.message(1, tensor);
    let mut pb = Pb::default();
    pb.string(1, &v.name);
    pb.message(2, ty);
    pb
}
