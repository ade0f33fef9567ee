# The python3 trace's workload: builds, serialises, parses and sorts a few thousand small records.
import json, collections
rows = [{"id": i, "name": "item-%d" % i, "tags": ["t%d" % (i % 7), "u%d" % (i % 11)], "score": i * 0.5}
        for i in range(10000)]
text = json.dumps(rows)
back = json.loads(text)
words = collections.Counter(w for r in back for w in r["tags"])
print(len(text), len(sorted(r["name"] for r in back)), words.most_common(2))
