"""Record greedy continuations of SmolLM2-135M-Instruct (the embedded default chat model)
with Hugging Face transformers loading the same GGUF file, as the reference for the import
(run once by a developer, never in CI: it needs torch).

    pip install torch transformers gguf numpy
    scripts/setup.sh                      # fetches the GGUF into .cache/smollm2/
    HF_HUB_OFFLINE=1 python3 scripts/gguf/reference_smollm2.py

Writes tests/fixtures/smollm2-reference.json: per prompt, the chat-template prompt ids,
24 greedy token ids and the top first-step logits.
"""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GGUF_DIR = os.path.join(ROOT, ".cache", "smollm2")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three primary colours, 1 2 3."}],
]
NEW_TOKENS = 24

tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF)
model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF, dtype=torch.float32)
model.eval()
cases = []
for messages in PROMPTS:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = list(ids)
    with torch.no_grad():
        x = torch.tensor([ids])
        logits = model(x).logits[0, -1]
        out = model.generate(x, max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=2)
    generated = out[0, len(ids):].tolist()
    top = torch.topk(logits, 16).indices.tolist()
    cases.append({"messages": messages, "prompt_ids": ids, "greedy_ids": generated,
                  "text": tok.decode(generated, skip_special_tokens=True),
                  "logits": {"indices": top, "values": [float(logits[i]) for i in top]}})
    print(repr(cases[-1]["text"]))
with open(os.path.join(ROOT, "tests", "fixtures", "smollm2-reference.json"), "w") as f:
    json.dump({"gguf": GGUF, "transformers": __import__("transformers").__version__,
               "new_tokens": NEW_TOKENS, "cases": cases}, f, indent=1)
