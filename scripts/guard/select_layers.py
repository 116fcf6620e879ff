#!/usr/bin/env python3
"""Layer choice for the embedded guard, on the validation split only: logistic regression
(scikit-learn) on cached pooled features of an encoder with layers 8, 16, 24 and 30
(`safegate guard train` writes the cache), for ten subsets of those layers.

Run: .cache/venv/bin/python scripts/guard/select_layers.py .cache/guard-data/features-<key>.bin
"""
import hashlib
import json
import struct
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.metrics import average_precision_score, f1_score
ROOT = Path(__file__).resolve().parents[2]
rows=[json.loads(l) for l in open(ROOT / '.cache/guard-data/data.jsonl')]
path=sys.argv[1]
b=open(path,'rb').read(); dim=struct.unpack('<I',b[:4])[0]; rec=32+4*dim
cache={}
for i in range(4,len(b),rec):
    cache[b[i:i+32]]=np.frombuffer(b[i+32:i+rec],dtype='<f4')
H=576; L=dim//H
def key(r): return hashlib.sha256((r['kind']+'\0'+r['text']).encode()).digest()
def get(split,kind):
    rs=[r for r in rows if r['split']==split and r['kind']==kind]
    return np.stack([cache[key(r)] for r in rs]), np.array([r['label'] for r in rs])
subsets=[[0],[1],[2],[3],[0,1],[1,2],[0,1,2],[0,1,2,3],[1,3],[2,3]]
for kind in ['prompt','response']:
    Xtr,ytr=get('train',kind); Xva,yva=get('val',kind)
    for sub in subsets:
        cols=np.concatenate([np.arange(l*H,(l+1)*H) for l in sub])
        sc=StandardScaler().fit(Xtr[:,cols])
        best=None
        for C in [0.01,0.1,1]:
            m=LogisticRegression(C=C,max_iter=2000,class_weight='balanced').fit(sc.transform(Xtr[:,cols]),ytr)
            p=m.predict_proba(sc.transform(Xva[:,cols]))[:,1]
            ap=average_precision_score(yva,p); f1=f1_score(yva,p>=0.5)
            if best is None or ap>best[0]: best=(ap,f1,C)
        print(kind, sub, 'AP %.4f F1 %.4f C %s'%best)
