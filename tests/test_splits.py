"""The train / validation / test split of sessions, by user hash or by time."""

from __future__ import annotations

import datetime as dt

import pytest

from beha2vec.config import ConfigError
from beha2vec.splits import check, session_parts


def _sessions(spark, users: int, per_user: int):
    start = dt.datetime(2024, 1, 1)
    rows = [(f"s{u}-{k}", f"u{u}", start + dt.timedelta(days=k, hours=u % 24))
            for u in range(users) for k in range(per_user)]
    return spark.createDataFrame(rows, "session_id string, user_id string, start_ts timestamp")


def test_by_users_every_session_of_a_user_shares_one_part_with_the_configured_shares(spark):
    sessions = _sessions(spark, 4000, 2)
    parts = session_parts(sessions, "users", 42, 0.2, 0.15).toPandas()
    assert (parts.groupby("user_id")["part"].nunique() == 1).all()
    shares = parts.drop_duplicates("user_id")["part"].value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.025)
    assert shares["validation"] == pytest.approx(0.15, abs=0.025)
    again = session_parts(sessions.repartition(7), "users", 42, 0.2, 0.15).toPandas()
    assert parts.sort_values("session_id").part.tolist() == again.sort_values("session_id").part.tolist()
    other_seed = session_parts(sessions, "users", 7, 0.2, 0.15).toPandas()
    assert parts.sort_values("session_id").part.tolist() != other_seed.sort_values("session_id").part.tolist()


def test_by_time_each_users_latest_sessions_are_test_then_validation(spark):
    parts = session_parts(_sessions(spark, 3, 10), "time", 42, 0.2, 0.15).toPandas()
    for _, user in parts.groupby("user_id"):
        order = user.assign(k=user["session_id"].str.split("-").str[1].astype(int)).sort_values("k")
        assert order["part"].tolist() == ["train"] * 6 + ["validation"] * 2 + ["test"] * 2


def test_fractions_and_modes_are_checked():
    with pytest.raises(ConfigError, match="evaluate.holdout_by"):
        check(0.2, 0.1, "sessions")
    with pytest.raises(ConfigError, match="evaluate.holdout_fraction"):
        check(1.0, 0.0)
    with pytest.raises(ConfigError, match="encoder.validation_fraction"):
        check(0.5, 0.5)
