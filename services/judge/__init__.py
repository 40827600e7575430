"""The judge kind: generative judges (LLM-as-judge) read under a template: verdicts, ratings, rationales, pairs."""
