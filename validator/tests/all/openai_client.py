"""Calls a Soma node's embeddings API through the `openai` package's client,
as an OpenAI user would, and prints what the client returned, and what the
server sent, as JSON.

Usage: python openai_client.py BASE_URL API_KEY TEXT TEXT
"""

import json
import sys

import openai

base_url, api_key, first, second = sys.argv[1:]
# No retries: a refusal must reach the test as it was sent. The timeout is
# longer than the node's own wait for a job, whose 504 says more.
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=150)


def create(texts, **options):
    raw = client.embeddings.with_raw_response.create(model="soma", input=texts, **options)
    sent = json.loads(raw.text)
    reply = raw.parse()
    return {
        # What the client made of it.
        "model": reply.model,
        "prompt_tokens": reply.usage.prompt_tokens,
        "total_tokens": reply.usage.total_tokens,
        "indices": [d.index for d in reply.data],
        "embeddings": [d.embedding for d in reply.data],
        # What the server sent (the client does not check it).
        "object": sent["object"],
        "data_objects": [d["object"] for d in sent["data"]],
        "sent_base64": [isinstance(d["embedding"], str) for d in sent["data"]],
    }


refused = {}
try:
    openai.OpenAI(base_url=base_url, api_key="not-a-key", max_retries=0).embeddings.create(
        model="soma", input=first
    )
except openai.AuthenticationError as e:
    refused = {"status": e.status_code, "message": e.message}

print(
    json.dumps(
        {
            "float_single": create(first, encoding_format="float"),
            "float_batch": create([first, second], encoding_format="float"),
            # Asked for, base64 comes back as the string the server sent.
            "base64_single": create(first, encoding_format="base64"),
            # Not asked for, the client asks for base64 and decodes it.
            "default_batch": create([first, second]),
            "refused": refused,
        }
    )
)
