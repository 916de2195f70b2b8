"""Experiment: how well can anyone identify synthetic users? A classifier that knows the truth.

Why: issue 4 asks the encoder to identify held-out users "by a wide margin" better than the other
models. On synthetic data the generator decides how much of a person a session can show, so this
scores, on ``evaluate``'s own held-out sample and split, a Bayes classifier handed every scored
user's true generating parameters (``beha2vec.synth``'s internals, the same seed): their personal
affinity over the site's sections (GA4) or the web's categories (web-tracking), their off-persona
share, their dwell multiplier and their persona's hours. No model trained on a few sessions per
user can be expected to beat it; how far the models are below it is the room there is. Next to
it, the same model family with its parameters fitted on the train split only (no truth): what the
scored sessions themselves allow. Last, the silhouette by user of the oracle's own scores used as
session vectors: what that metric gives the best identifier there is.
The oracle approximates: consecutive visits to one unit (page or domain), merged by sessionize,
count once; the purchase funnel's forced pages are scored like any other page; observed dwell (for
web-tracking, active seconds or the gap to the next visit) is the generator's dwell plus one offset
fitted on the sample.

    python bench/synth_oracle.py --lake LAKE [--kind webtracking] --users 500 --days 28 --personas 5 --seed 11

The lake must come from ``beha2vec synth`` with the same arguments and hold
``session_embeddings`` (the sample is the sessions every model embedded, as ``evaluate`` draws it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from beha2vec import evaluate as ev
from beha2vec import synth
from beha2vec.config import load_config
from beha2vec.context import Context

FLOOR = 1e-4  # probability of a class the model gives a user none of (funnel pages, rounding)
CONCENTRATION = 40.0  # synth draws a user's section weights as gamma(40 x the persona's share)


def wander_shares(kind: str) -> np.ndarray:
    """Where an off-persona visit goes, over sections (ga4) or categories (webtracking)."""
    if kind == "ga4":
        wander = np.zeros(len(synth.SECTIONS))
        wander[synth._WANDER] = 1 / len(synth._WANDER)
        return wander
    wander = np.full(len(synth.CATEGORIES), (1 - synth._LONGTAIL_NOISE) / synth._LONGTAIL)
    wander[synth._LONGTAIL] = synth._LONGTAIL_NOISE
    return wander


def unit_likelihoods(kind: str) -> dict[str, np.ndarray]:
    """Per visit unit, P(unit | class) over the classes, for the units sessionize writes.

    GA4: a page path belongs to one section, and its share of the section is the same for every user,
    so it cancels between users: a one-hot row. Web-tracking: a domain's share of each category's
    visits (its URLs' popularity); one domain, bbc.co.uk, serves two categories.
    """
    if kind == "ga4":
        site = synth._site()
        rows = {}
        for path, section in zip(site.paths, site.section_of.tolist(), strict=True):
            rows[path.split("?")[0]] = rows[path] = np.eye(len(synth.SECTIONS))[section]
        return rows
    web = synth._web()
    category = np.ceil(web.cum).astype(int) - 1
    share = np.diff(web.cum, prepend=0.0)  # a category's last URL ends at exactly c + 1
    rows = {}
    for domain, c, p in zip(web.domains, category.tolist(), share.tolist(), strict=True):
        rows.setdefault(domain, np.zeros(len(synth.CATEGORIES)))[c] += p
    return rows


def truth_parameters(spec: synth._Spec) -> pd.DataFrame:
    """Per user id: persona index, class probabilities (a row over sections or categories), dwell
    multiplier."""
    plan = synth._plan(spec)
    wander = wander_shares(spec.kind)
    rows = []
    for block in range(synth._n_blocks(spec.users)):
        users = synth._block_users(spec, plan, block)
        affinity = np.diff(users.cum, axis=1, prepend=0.0)
        shares = (1 - users.noise[:, None]) * affinity + users.noise[:, None] * wander
        for i, user_id in enumerate(users.ids):
            rows.append({"user_id": user_id, "persona": int(plan.persona[users.lo + i]),
                         "shares": shares[i], "dwell": float(users.dwell[i])})
    return pd.DataFrame(rows).set_index("user_id")


def hour_log_probs(personas: int) -> np.ndarray:
    """log P(start hour | persona, weekend) as the plan draws it: [persona, weekend, hour]."""
    out = np.empty((personas, 2, 24))
    for p, template in enumerate(synth.PERSONAS[:personas]):
        for weekend, peaks in enumerate((template.hours, template.weekend_hours)):
            w = synth._hour_weights(peaks)
            out[p, weekend] = np.log(w / w.sum())
    return out


def fitted_scores(counts: np.ndarray, dwell_logs: list[np.ndarray], user: np.ndarray, train: np.ndarray,
                  n_users: int) -> np.ndarray:
    """Log-likelihood of every session under every user, the generator's model family with its
    parameters estimated from the train split alone (what ``evaluate``'s classifier sees): class
    shares (a unit of two classes shared out by ``unit_likelihoods``) shrunk towards the pooled
    shares with the generator's own concentration, a per-user mean log dwell with the pooled spread.
    No truth: the same information as the models."""
    pooled = counts[train].sum(0) / counts[train].sum()
    per_user = np.stack([counts[train & (user == u)].sum(0) for u in range(n_users)])
    shares = (per_user + CONCENTRATION * pooled) / (per_user.sum(1, keepdims=True) + CONCENTRATION)
    mean = np.array([np.concatenate([dwell_logs[r] for r in np.flatnonzero(train & (user == u))]).mean()
                     for u in range(n_users)])
    spread = np.concatenate([dwell_logs[r] - mean[user[r]] for r in np.flatnonzero(train)]).std()
    dwell = np.stack([(-0.5 * ((logs[:, None] - mean[None, :]) / spread) ** 2).sum(0) for logs in dwell_logs])
    return counts @ np.log(shares + FLOOR).T + dwell


def posterior(scores: np.ndarray) -> np.ndarray:
    """P(user | session) under a uniform prior, from log-likelihoods ``[session, user]``.

    As a session's vector it is an embedding made for telling users apart from the generator's
    truth: two sessions are close exactly when they point to the same users. Its silhouette by user
    shows what that metric gives the best identifier there is on this data."""
    shifted = np.exp(scores - scores.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", nargs="+", default=["conf/local.yaml"])
    parser.add_argument("--lake", type=Path, required=True)
    parser.add_argument("--kind", choices=synth.KINDS, default="ga4", help="synth's --kind")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    for name in ("users", "days", "personas", "seed"):
        parser.add_argument(f"--{name}", type=int, required=True, help=f"synth's --{name}")
    args = parser.parse_args()

    spec = synth._Spec(args.kind, args.users, args.days, args.personas, args.seed)
    truth = truth_parameters(spec)
    ctx = Context(load_config(args.conf, [*args.set, "spark.progress_bar=false"], str(args.lake)))
    conf = ctx.config.evaluate
    sessions = ctx.lake.read("sessions")
    ids = (ev.sample_sessions(ctx.lake.read("session_embeddings"), conf, sessions)
           .select("session_id", "user_id").distinct())
    rows = (sessions.join(ids, ["session_id", "user_id"])
            .select("session_id", "user_id", "start_ts", "domains", "dwell_s").toPandas()
            .sort_values(["user_id", "session_id"], ignore_index=True))
    candidates = np.unique(rows["user_id"])
    missing = set(candidates) - set(truth.index)
    if missing:
        raise SystemExit(f"{len(missing)} sampled users are not in synth's plan for these arguments, "
                         f"e.g. {sorted(missing)[:3]}: is the lake from this synth run?")
    params = truth.loc[candidates]
    likelihood = unit_likelihoods(args.kind)
    shares = np.stack(params["shares"])  # [user, class]
    median = np.log([t.dwell for t in synth.PERSONAS[: args.personas]])
    sigma = np.array([t.dwell_sigma for t in synth.PERSONAS[: args.personas]])
    persona = params["persona"].to_numpy()
    hours = hour_log_probs(args.personas)

    unknown = 0
    counts = np.zeros((len(rows), shares.shape[1]))
    score_classes = np.zeros((len(rows), len(candidates)))  # [session, user]
    dwell_logs, own_expected = [], []
    own = {u: i for i, u in enumerate(candidates)}
    for r, (user, units, dwell) in enumerate(zip(rows["user_id"], rows["domains"], rows["dwell_s"],
                                                 strict=True)):
        known = [likelihood[unit] for unit in units if unit in likelihood]
        unknown += len(units) - len(known)
        if known:
            visits = np.stack(known)  # [visit, class]
            counts[r] = (visits / visits.sum(1, keepdims=True)).sum(0)
            score_classes[r] = np.log(visits @ shares.T + FLOOR).sum(0)
        logs = np.log(np.clip(np.asarray(dwell, dtype=float), 1.0, None))
        dwell_logs.append(logs)
        u = own[user]
        own_expected.append(np.full(len(logs), median[persona[u]] + np.log(params["dwell"].iloc[u])))
    offset = float(np.mean(np.concatenate(dwell_logs) - np.concatenate(own_expected)))

    mu = median[persona] + np.log(params["dwell"].to_numpy()) + offset  # [user]
    score_dwell = np.stack([
        (-0.5 * ((logs[:, None] - mu[None, :]) / sigma[persona][None, :]) ** 2
         - np.log(sigma[persona])[None, :]).sum(0)
        for logs in dwell_logs])
    start = pd.to_datetime(rows["start_ts"], utc=True)
    weekend = (start.dt.weekday >= 5).to_numpy().astype(int)
    score_hours = hours[:, weekend, start.dt.hour.to_numpy()].T[:, persona]  # [session, user]

    users = rows["user_id"].to_numpy()
    test = ev.split_by_user(users, conf.seed, conf.test_fraction)
    index = np.array([own[u] for u in users])
    truth_index = index[test]
    print(f"{test.sum()} held-out sessions of {len(candidates)} users (chance {1 / len(candidates):.3f}); "
          f"{unknown} visits to units not in the generator's vocabulary were ignored; "
          f"dwell offset {offset:+.2f}")
    print(f"persona only (evaluate's id_accuracy_persona_chance): "
          f"{ev.persona_chance(users, persona[index], test):.3f}")
    fitted = fitted_scores(counts, dwell_logs, index, ~test, len(candidates))
    classes = "sections" if args.kind == "ga4" else "categories"
    for name, score in ((f"oracle, {classes}", score_classes),
                        (f"oracle, {classes} + dwell", score_classes + score_dwell),
                        (f"oracle, {classes} + dwell + hours", score_classes + score_dwell + score_hours),
                        (f"fitted on the train split, {classes} + dwell", fitted)):
        guess = score[test].argmax(1)
        print(f"{name}: id accuracy {np.mean(guess == truth_index):.3f}, "
              f"persona accuracy {np.mean(persona[guess] == persona[truth_index]):.3f}")
    oracle = score_classes + score_dwell + score_hours
    print(f"silhouette by user (cosine) on all {len(rows)} sampled sessions, as evaluate scores the models:")
    centred = oracle - oracle.mean(1, keepdims=True)
    for name, vectors in (("the oracle's posterior over users", posterior(oracle)),
                          ("its log-likelihoods, centred per session", centred)):
        print(f"  {name}: {ev.silhouette(vectors, users, 'cosine'):.3f}")


if __name__ == "__main__":
    main()
