"""Search a study index by free text, or for studies like a given one.

Examples:
  hlip search lib.index "acute left MCA territory infarct" -k 20
  hlip search lib.index "ring-enhancing lesion" --modality MR --date-from 2024-01-01 --json
  hlip search lib.index --like /data/study_0042

The text (or the study) is encoded by the model recorded in the index (--model to point at the same
weights elsewhere); embeddings of another model are not comparable and are refused.
A text query is centred on typical queries of the model's domain (HLIPModel.encode_query): studies rank
by how much more they match it than they match typical queries; --plain ranks by plain cosine.
--like: a study of the index (its path, its StudyInstanceUID, or a folder holding a study with that UID) is
searched with its stored vector and never listed itself, as the server and the napari plugin do
(``hlip_engine.search.like_query``). --json prints ``hlip_engine.search.search_document``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAME = "search"
HELP = "search a study index by free text or --like STUDY"


def add_arguments(p) -> None:
    p.add_argument("index_dir", metavar="INDEX", help="index folder made by `hlip index build`")
    p.add_argument("text", nargs="?", default=None, help="free-text query (quote it)")
    p.add_argument("--like", metavar="STUDY", help="find studies similar to this one (path in the index, "
                   "StudyInstanceUID, or any study folder/file)")
    p.add_argument("-k", type=int, default=10, help="how many studies to return (default 10)")
    p.add_argument("--modality", action="append", help="only this modality (repeatable: --modality MR --modality CT)")
    p.add_argument("--date-from", help="only studies on or after this date (2024-03-01 or 20240301)")
    p.add_argument("--date-to", help="only studies on or before this date")
    p.add_argument("--plain", action="store_true", help="rank by plain cosine to the query text, without "
                   "centring it on typical queries (see HLIPModel.encode_query)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--model", metavar="CKPT", help="the index's model at another path (must be the same weights)")
    p.add_argument("--device", help="torch device for encoding the query (default: CUDA when available)")


def run(args) -> int:
    from hlip_engine import search as retrieval
    from hlip_engine.index import StudyIndex

    text = (args.text or "").strip()
    if bool(text) == bool(args.like):
        raise ValueError("give either free text to search for, or --like STUDY (not both, not neither)")
    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    index = StudyIndex.open(args.index_dir)
    like, model = args.like, None  # the model loads only when something must be encoded
    if text:
        model = _model_of(index, args)
    elif retrieval.like_query(index, like).vector is None:  # not a path or UID of the index: read the study
        from hlip_engine.io import load_study

        like = load_study(like)
        if retrieval.like_query(index, like).vector is None:  # nor its StudyInstanceUID: encode it
            model = _model_of(index, args)
    filters = {"modality": args.modality, "date_from": args.date_from, "date_to": args.date_to}
    doc = retrieval.search_document(index, model, text=text or None, like=like, k=args.k, filters=filters,
                                    plain=args.plain, index_name=args.index_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    hits = doc["hits"]
    print(f"{len(hits)} of {doc['size']} studies for {doc['query']}", file=sys.stderr)
    for rank, h in enumerate(hits, 1):
        date = f"{h['date'][:4]}-{h['date'][4:6]}-{h['date'][6:]}" if h.get("date") else "?"
        print(f"{rank:3d}  {h['score']:.4f}  {date:10s}  {h.get('modality') or '?':3s}  "
              f"{(h.get('description') or '')[:40]:40s}  {h['path']}")
    return 0


def _model_of(index, args):
    """Load the index's model (its recorded checkpoint, or --model); refuse other weights (ModelMismatchError)."""
    from hlip_engine.model import load_model
    from hlip_engine.search import checkpoint_identity

    recorded = index.info.get("checkpoint")
    path = Path(args.model) if args.model else Path(recorded) if recorded else None
    if path is None or not path.exists():
        raise FileNotFoundError(f"{args.index_dir} was built with {recorded or index.identity['model_id']}, "
                                "which is not there; pass --model with the same checkpoint")
    index.check_model(checkpoint_identity(path))  # before loading: other weights are refused cheaply
    return load_model(path, device=args.device)
