//! GGUF (version 2 and 3) reading: header, metadata, tensor infos, tensor data on demand.
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::quant::GgmlType;
use crate::GgufError;

const MAGIC: &[u8; 4] = b"GGUF";
/// Refuse absurd counts from a corrupt header before allocating for them.
const MAX_COUNT: u64 = 1 << 24;
const MAX_STRING: u64 = 1 << 26;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file: everything but the tensor data is read at open.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
    file_len: u64,
}

struct Cursor<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        let mut buf = vec![0; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|_| GgufError::Truncated(format!("{what} at byte {}", self.pos)))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut buf = [0; N];
        self.r
            .read_exact(&mut buf)
            .map_err(|_| GgufError::Truncated(format!("{what} at byte {}", self.pos)))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn count(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(GgufError::Invalid(format!("{what}: implausible count {n}")));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(GgufError::Invalid(format!(
                "{what}: implausible string length {n}"
            )));
        }
        String::from_utf8(self.bytes(n, what)?)
            .map_err(|_| GgufError::Invalid(format!("{what}: not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => Value::Bool(self.array::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                let inner = self.u32(what)?;
                let n = self.count(what)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(inner, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(GgufError::Invalid(format!(
                    "{what}: unknown value type {other}"
                )))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::Io(path.to_path_buf(), e))?;
        let file_len = file
            .metadata()
            .map_err(|e| GgufError::Io(path.to_path_buf(), e))?
            .len();
        let mut c = Cursor {
            r: BufReader::new(&file),
            pos: 0,
        };
        if &c.array::<4>("the magic number")? != MAGIC {
            return Err(GgufError::Invalid(
                "not a GGUF file (the first bytes are not `GGUF`)".into(),
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Invalid(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = c.count("the tensor count")?;
        let n_kv = c.count("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("the type of `{key}`"))?;
            let value = c.value(ty, &format!("metadata `{key}`"))?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{i}"))?;
            let n_dims = c.u32(&format!("tensor `{name}` rank"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}`: rank {n_dims} (1 to 4 expected)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&format!("tensor `{name}` dims")))
                .collect::<Result<Vec<_>, _>>()?;
            let ty = c.u32(&format!("tensor `{name}` type"))?;
            let ggml_type = GgmlType::from_id(ty).ok_or_else(|| GgufError::UnsupportedType {
                tensor: name.clone(),
                type_id: ty,
            })?;
            let offset = c.u64(&format!("tensor `{name}` offset"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1);
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let gguf = Self {
            path: path.to_path_buf(),
            file,
            version,
            metadata,
            tensors,
            data_start,
            file_len,
        };
        for t in &gguf.tensors {
            let end = gguf.data_start + t.offset + t.ggml_type.bytes_for(t.elements(), &t.name)?;
            if end > gguf.file_len {
                return Err(GgufError::Truncated(format!(
                    "tensor `{}` ends at byte {end}, the file has {}",
                    t.name, gguf.file_len
                )));
            }
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor as stored.
    pub fn raw(&self, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let len = t.ggml_type.bytes_for(t.elements(), &t.name)?;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.data_start + t.offset))
            .map_err(|e| GgufError::Io(self.path.clone(), e))?;
        let mut buf = vec![0; len as usize];
        f.read_exact(&mut buf)
            .map_err(|_| GgufError::Truncated(format!("tensor `{}` data", t.name)))?;
        Ok(buf)
    }

    /// A tensor's values as f32, in ggml order (innermost dimension contiguous).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let raw = self.raw(t)?;
        t.ggml_type.dequantize(&raw, t.elements() as usize)
    }
}
