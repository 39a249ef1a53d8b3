"""Search a study index by free text, or for studies like a given one.

Examples:
  hlip search lib.index "acute left MCA territory infarct" -k 20
  hlip search lib.index "ring-enhancing lesion" --modality MR --date-from 2024-01-01 --json
  hlip search lib.index --like /data/study_0042

The text (or the study) is encoded by the model recorded in the index (--model to point at the same
weights elsewhere); embeddings of another model are not comparable and are refused.
A text query is centred on typical queries of the model's domain (HLIPModel.encode_query): studies rank
by how much more they match it than they match typical queries; --plain ranks by plain cosine.
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
    from hlip_engine.index import StudyIndex

    text = (args.text or "").strip()
    if bool(text) == bool(args.like):
        raise ValueError("give either free text to search for, or --like STUDY (not both, not neither)")
    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    index = StudyIndex.open(args.index_dir)
    exclude: list[int] = []
    if args.like:
        query, exclude, what = _study_query(index, args)
    else:
        import torch

        model = _model_of(index, args)
        threads = torch.get_num_threads()
        if model.device.type == "cpu":
            torch.set_num_threads(1)  # one short query: a second thread only waits (12 vs 45+ ms measured)
        try:
            with torch.inference_mode():
                query, what = model.encode_query([text], centre=not args.plain).float().cpu().numpy(), repr(text)
        finally:
            torch.set_num_threads(threads)
    scores, ids = index.search(query, args.k, modality=args.modality, date_from=args.date_from,
                               date_to=args.date_to, exclude=exclude)
    hits = [dict(score=round(float(s), 4), **m) for s, m in zip(scores[0], index.metadata(ids[0])) if m]
    if args.json:
        print(json.dumps({"query": what, "index": str(args.index_dir), "hits": hits}, indent=2))
        return 0
    print(f"{len(hits)} of {len(index)} studies for {what}", file=sys.stderr)
    for rank, h in enumerate(hits, 1):
        date = f"{h['date'][:4]}-{h['date'][4:6]}-{h['date'][6:]}" if h.get("date") else "?"
        print(f"{rank:3d}  {h['score']:.4f}  {date:10s}  {h.get('modality') or '?':3s}  "
              f"{(h.get('description') or '')[:40]:40s}  {h['path']}")
    return 0


def _model_of(index, args):
    """Load the index's model; refuse weights other than the ones its embeddings were made with."""
    from hlip_engine.index.build import model_fingerprint
    from hlip_engine.model import load_model

    recorded = index.info.get("checkpoint")
    path = Path(args.model) if args.model else Path(recorded) if recorded else None
    if path is None or not path.exists():
        raise FileNotFoundError(f"{args.index_dir} was built with {recorded or index.identity['model_id']}, "
                                "which is not there; pass --model with the same checkpoint")
    want = index.identity.get("model_hash")
    if want and model_fingerprint(path) != want:
        raise ValueError(f"{path} is not the model this index was built with "
                         f"({index.identity['model_id']}, sha256 {want[:12]}); its embeddings are not comparable")
    return load_model(path, device=args.device)


def _study_query(index, args):
    """(query [1, dim], ids to exclude, description): a stored study's vector, or a new study encoded."""
    import torch

    like = str(args.like)
    row = None
    for where in ({"path": like}, {"path": str(Path(like).resolve())}, {"study_uid": like}):
        row = index.find(**where)
        if row is not None:
            break
    if row is not None:
        meta = index.metadata([row])[0]
        return index.vectors([row]), [row], f"studies like {meta['path']} ({meta.get('description') or meta['study_uid']})"
    from hlip_engine.io import load_study
    from hlip_engine.preprocessing import preprocess

    model = _model_of(index, args)
    study = load_study(like)
    pre = dict(index.info.get("preprocess") or {})
    recipe = pre.pop("recipe", None) or index.identity.get("recipe") or None
    prepared = preprocess(study, recipe, **pre)
    with torch.inference_mode():
        vec = model.encode_image(torch.as_tensor(prepared.tensor)[None]).cpu().numpy()
    return vec, [], f"studies like {like}"
