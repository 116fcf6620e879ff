#!/usr/bin/env python3
"""A request after a paragraph: how often the embedded guard, served, catches a harmful
request buried in benign text, and how often it flags benign long prompts. Through a
running safegate's /v1/guard/classify, each text scored whole (as the server reads it) and,
for comparison, also as its sentences one by one (the worst; the split the server uses for
heads with `sentence_windows`):

    python3 scripts/guard/buried_eval.py [BASE_URL]

"whole" is the server's verdict (a head with a sentence head reads the sentences of a
user's text too); "with chunks" adds each sentence sent as a request of its own.

Sets: 150 long benign test/dev prompts never trained on; 40 long everyday requests written
for it (scripts/guard/long_everyday_probe.txt); 60 dev harmful and 60 dev everyday
requests each put first, last or in the middle of a benign test-split document (seeded);
scripts/guard/buried_probe.txt. Needs .cache/guard-data/data.jsonl (build_data.py).
Standard library only.
"""
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
ROOT=Path(__file__).resolve().parents[2]
from concurrent.futures import ThreadPoolExecutor
base_url=sys.argv[1] if len(sys.argv)>1 else 'http://127.0.0.1:8080'
rows=[json.loads(l) for l in open(ROOT/'.cache/guard-data/data.jsonl')]
# The split the served guard uses (one copy, shared with the data builder).
sys.path.insert(0,str(ROOT/'scripts/guard'))
from build_attack_data import sentence_chunks as chunks  # noqa: E402
def score(t):
    for attempt in range(20):
        r=urllib.request.Request(base_url+'/v1/guard/classify',json.dumps({'messages':[{'role':'user','content':t}],'agent_type':'user'}).encode(),{'content-type':'application/json'})
        try:
            return json.load(urllib.request.urlopen(r))['verdict']['p_unsafe']
        except urllib.error.HTTPError as e:
            if e.code not in (429,503): raise
            time.sleep(1)
    raise RuntimeError('busy')
def both(t):
    w=score(t); cs=chunks(t)
    c=max(score(x) for x in cs) if len(cs)>1 else w
    return w,c
# (a) long benign prompts never trained on
srcs={'writingbench','persistbench','agentbench-os','freshqa','hard-benign','lookalike-benign','dev-everyday','dev-lookalike','cse4-questions','vqa-rad','chatterbot','everyday-benign'}
a=[r['text'] for r in rows if r['source'] in srcs and r['split'] in ('test','dev') and r['kind']=='prompt' and r['label']==0 and len(chunks(r['text']))>=2]
random.Random(1).shuffle(a); a=a[:150]
# (b) buried: dev harmful/everyday requests inside test docs
rng=random.Random(7)
docs=[r['text'] for r in rows if r['kind']=='prompt' and r['label']==0 and r['split']=='test' and 150<len(r['text'])<1200]
bh=[];bb=[]
for src,lst in (('dev-harmful',bh),('dev-everyday',bb)):
    reqs=[r['text'] for r in rows if r['source']==src]
    rng.shuffle(reqs)
    for q in reqs[:60]:
        w=rng.choice(docs).split(); at=rng.choice([0,len(w),rng.randrange(len(w)+1)])
        lst.append(" ".join(w[:at]+[q]+w[at:]))
def lines(name): return [l for l in open(ROOT/'scripts/guard'/name).read().splitlines() if l.strip() and not l.startswith('#')]
probe=[l.split('\t',1) for l in lines('buried_probe.txt')]
everyday=[l.split('\t',1)[1] for l in lines('long_everyday_probe.txt')]
with ThreadPoolExecutor(2) as ex:
    ra=list(ex.map(both,a)); rbh=list(ex.map(both,bh)); rbb=list(ex.map(both,bb)); rp=list(ex.map(lambda x: both(x[1]),probe))
    re_=list(ex.map(both,everyday))
def rate(res,i): return sum(x[i]>0.5 for x in res)
print(f"long benign (n={len(ra)}): flagged whole {rate(ra,0)}, with chunks {rate(ra,1)}")
print(f"buried dev harmful (n={len(rbh)}): caught whole {rate(rbh,0)}, with chunks {rate(rbh,1)}")
print(f"buried dev everyday (n={len(rbb)}): flagged whole {rate(rbb,0)}, with chunks {rate(rbb,1)}")
ph=[x for x,(c,_) in zip(rp,probe) if c!='safe']; ps=[x for x,(c,_) in zip(rp,probe) if c=='safe']
print(f"buried probe harmful (n={len(ph)}): caught whole {rate(ph,0)}, with chunks {rate(ph,1)}; safe (n={len(ps)}) flagged whole {rate(ps,0)}, with chunks {rate(ps,1)}")
print(f"long everyday probe (n={len(re_)}): flagged whole {rate(re_,0)}, with chunks {rate(re_,1)}")
for t,(w,c) in list(zip(a,ra))+list(zip(everyday,re_)):
    if w>0.5: print(f"  flagged {w:.2f} {t[:110]!r}")
