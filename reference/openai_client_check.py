"""Talks to a running `moxe serve` with the official OpenAI Python client and checks what it gets.

    .venv/bin/pip install openai
    cargo run --release -- serve --port 8080 &
    .venv/bin/python reference/openai_client_check.py --base-url http://127.0.0.1:8080/v1

Checks: the model list; a completion with usage; the same completion streamed gives the same
text; n = 2 with a seed is reproducible; logprobs; the chat endpoint (a 400 naming the chat
template when the model has none, a reply when it has one); 8 concurrent clients all answer;
an unknown model is a 404 the client raises as NotFoundError. Exits 1 on the first failure.
"""

import argparse
import concurrent.futures
import sys

import openai


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)
    print(f"ok: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)

    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) == 1, f"one model listed: {ids}")
    model = ids[0]

    plain = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=24, temperature=0.8, seed=7
    )
    text = plain.choices[0].text
    check(plain.usage.completion_tokens > 0, f"completion with usage: {plain.usage}")

    pieces = []
    for chunk in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=24, temperature=0.8, seed=7, stream=True
    ):
        pieces.extend(c.text for c in chunk.choices)
    check("".join(pieces) == text, "the streamed text equals the plain one")

    two = [
        client.completions.create(model=model, prompt="It was", max_tokens=12, n=2, seed=3)
        for _ in range(2)
    ]
    texts = [[c.text for c in sorted(r.choices, key=lambda c: c.index)] for r in two]
    check(texts[0] == texts[1], "n = 2 with a seed is reproducible")

    lp = client.completions.create(model=model, prompt="The", max_tokens=3, logprobs=2)
    top = lp.choices[0].logprobs.top_logprobs
    tokens = lp.choices[0].logprobs.tokens
    check(
        len(top) == 3
        and all(2 <= len(t) <= 3 and tok in t for t, tok in zip(top, tokens)),
        "logprobs with 2 alternatives per token, and the sampled token",
    )

    try:
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8
        )
        check(chat.choices[0].message.role == "assistant", "chat reply (the model has a template)")
    except openai.BadRequestError as e:
        check("template" in str(e), f"chat without a template is a 400 naming it: {e}")

    def one(i):
        r = client.completions.create(model=model, prompt=f"Story {i}:", max_tokens=16, seed=i)
        return r.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    check(len(answers) == 8 and all(isinstance(a, str) for a in answers), "8 concurrent clients")
    check(answers[3] == one(3), "a seeded request batched with others equals it alone")

    try:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check("gpt-4" in str(e), f"an unknown model is a 404, as OpenAI answers it: {e}")


if __name__ == "__main__":
    main()
