//! ggml tensor types and their dequantization to f32 (block layouts as in ggml-quants.c).

use half::{bf16, f16};

use crate::GgufError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// A type this importer cannot dequantize (kept so the error can name it).
    Other(u32),
}

const QK: usize = 32;
const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            // Known to ggml, not to this importer: the error names the tensor later.
            9 | 15..=29 | 31..=40 => Self::Other(id),
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::BF16 => "BF16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q2K => "Q2_K".into(),
            Self::Q3K => "Q3_K".into(),
            Self::Q4K => "Q4_K".into(),
            Self::Q5K => "Q5_K".into(),
            Self::Q6K => "Q6_K".into(),
            Self::Other(id) => format!("ggml type {id}"),
        }
    }

    /// (elements per block, bytes per block).
    fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (QK, 18),
            Self::Q4_1 => (QK, 20),
            Self::Q5_0 => (QK, 22),
            Self::Q5_1 => (QK, 24),
            Self::Q8_0 => (QK, 34),
            Self::Q2K => (QK_K, 84),
            Self::Q3K => (QK_K, 110),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
            Self::Other(_) => return None,
        })
    }

    /// Bytes a tensor of `elements` values takes.
    pub fn bytes_for(self, elements: u64, tensor: &str) -> Result<u64, GgufError> {
        let (per, bytes) = self.block().ok_or_else(|| self.unsupported(tensor))?;
        if !elements.is_multiple_of(per as u64) {
            return Err(GgufError::Invalid(format!(
                "tensor `{tensor}`: {elements} values are not whole {} blocks of {per}",
                self.name()
            )));
        }
        Ok(elements / per as u64 * bytes as u64)
    }

    fn unsupported(self, tensor: &str) -> GgufError {
        GgufError::Invalid(format!(
            "tensor `{tensor}`: quantization {} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K are)",
            self.name()
        ))
    }

    /// `raw` holds exactly `elements` values of this type.
    pub fn dequantize(self, raw: &[u8], elements: usize) -> Result<Vec<f32>, GgufError> {
        let (per, bytes) = self.block().ok_or_else(|| self.unsupported("?"))?;
        if !elements.is_multiple_of(per) || raw.len() != elements / per * bytes {
            return Err(GgufError::Invalid(format!(
                "{} data of {} bytes does not hold {elements} values",
                self.name(),
                raw.len()
            )));
        }
        let mut out = vec![0f32; elements];
        let blocks = raw.chunks_exact(bytes).zip(out.chunks_exact_mut(per));
        match self {
            Self::F32 => {
                blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Self::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
            Self::BF16 => blocks.for_each(|(b, y)| {
                y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
            }),
            Self::Q4_0 => blocks.for_each(|(b, y)| q4(y, f16_at(b, 0), 0.0, -8.0, &b[2..])),
            Self::Q4_1 => blocks.for_each(|(b, y)| q4(y, f16_at(b, 0), f16_at(b, 2), 0.0, &b[4..])),
            Self::Q5_0 => {
                blocks.for_each(|(b, y)| q5(y, f16_at(b, 0), 0.0, -16.0, &b[2..6], &b[6..]))
            }
            Self::Q5_1 => {
                blocks.for_each(|(b, y)| q5(y, f16_at(b, 0), f16_at(b, 2), 0.0, &b[4..8], &b[8..]))
            }
            Self::Q8_0 => blocks.for_each(|(b, y)| {
                let d = f16_at(b, 0);
                for (v, &q) in y.iter_mut().zip(&b[2..]) {
                    *v = d * f32::from(q as i8);
                }
            }),
            Self::Q2K => blocks.for_each(|(b, y)| q2_k(b, y)),
            Self::Q3K => blocks.for_each(|(b, y)| q3_k(b, y)),
            Self::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
            Self::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
            Self::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
            Self::Other(_) => unreachable!("no block size"),
        }
        Ok(out)
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Q4_0 / Q4_1: low nibbles are values 0..16, high nibbles 16..32; y = d * (q + offset) + m.
fn q4(y: &mut [f32], d: f32, m: f32, offset: f32, qs: &[u8]) {
    for j in 0..QK / 2 {
        y[j] = d * (f32::from(qs[j] & 0x0f) + offset) + m;
        y[j + QK / 2] = d * (f32::from(qs[j] >> 4) + offset) + m;
    }
}

/// Q5_0 / Q5_1: the fifth bit of value j is bit j of `qh`.
fn q5(y: &mut [f32], d: f32, m: f32, offset: f32, qh: &[u8], qs: &[u8]) {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    for j in 0..QK / 2 {
        let hi0 = ((qh >> j) & 1) << 4;
        let hi1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * ((u32::from(qs[j] & 0x0f) | hi0) as f32 + offset) + m;
        y[j + QK / 2] = d * ((u32::from(qs[j] >> 4) | hi1) as f32 + offset) + m;
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        (f32::from(q[j] & 63), f32::from(q[j + 4] & 63))
    } else {
        (
            f32::from((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4)),
            f32::from((q[j + 4] >> 4) | ((q[j] >> 6) << 4)),
        )
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (chunk, (ys, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        for l in 0..32 {
            ys[l] = d * s1 * f32::from(q[l] & 0x0f) - dmin * m1;
            ys[l + 32] = d * s2 * f32::from(q[l] >> 4) - dmin * m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (chunk, (ys, ql)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
            let h2 = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
            ys[l] = d * s1 * (f32::from(ql[l] & 0x0f) + h1) - dmin * m1;
            ys[l + 32] = d * s2 * (f32::from(ql[l] >> 4) + h2) - dmin * m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        let ys = &mut y[128 * half..128 * (half + 1)];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            ys[l] = s(0) * q1 as f32;
            ys[l + 32] = s(2) * q2 as f32;
            ys[l + 64] = s(4) * q3 as f32;
            ys[l + 96] = s(6) * q4 as f32;
        }
    }
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for (n, ys) in y.chunks_exact_mut(128).enumerate() {
        let q = &qs[32 * n..];
        for j in 0..4 {
            let shift = 2 * j;
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * f32::from(sc & 0x0f), dmin * f32::from(sc >> 4));
                for l in 0..16 {
                    let qv = (q[l + 16 * part] >> shift) & 3;
                    ys[32 * j + 16 * part + l] = dl * f32::from(qv) - ml;
                }
            }
        }
    }
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, raw_scales) = (&b[0..32], &b[32..96], &b[96..108]);
    let d_all = f16_at(b, 108);
    // Sixteen 6-bit scales packed into 12 bytes.
    let mut aux = [0u32; 4];
    for (i, a) in aux.iter_mut().take(3).enumerate() {
        *a = u32::from_le_bytes([
            raw_scales[4 * i],
            raw_scales[4 * i + 1],
            raw_scales[4 * i + 2],
            raw_scales[4 * i + 3],
        ]);
    }
    let (kmask1, kmask2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | ((tmp & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    let scales: Vec<i8> = aux
        .iter()
        .flat_map(|a| a.to_le_bytes())
        .map(|v| v as i8)
        .collect();
    let mut is = 0;
    let mut m = 1u8;
    for (n, ys) in y.chunks_exact_mut(128).enumerate() {
        let q = &qs[32 * n..];
        for j in 0..4 {
            let shift = 2 * j;
            for part in 0..2 {
                let dl = d_all * (f32::from(scales[is]) - 32.0);
                is += 1;
                for l in 0..16 {
                    let idx = l + 16 * part;
                    let low = i32::from((q[idx] >> shift) & 3);
                    let high = if hmask[idx] & m != 0 { 0 } else { 4 };
                    ys[32 * j + idx] = dl * (low - high) as f32;
                }
            }
            m <<= 1;
        }
    }
}
