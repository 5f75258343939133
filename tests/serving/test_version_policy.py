"""A base path's versions as TF Serving's file system source reads them (`serving.version_policy`)."""


def test_version_names_parse_as_tf_serving_parses_them(tmp_path):
    """TF Serving's file system source counts every child whose name tsl's safe_strto64 reads: whitespace around
    an optional minus and ASCII digits, within int64; files too (they then fail to load)."""
    from serving import version_policy
    for name in ("1", "007", str(2 ** 63), "\u0661\u0662", "tmp-3", "-4", "+6", " 8", "9 x", "-", ".10"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a SavedModel")
    # A version past int64 could be neither reported (ModelVersionStatus.version is int64)
    # nor answered (ModelSpec.version): as "latest" it would fail every request.
    assert version_policy.list_versions(str(tmp_path)) == {1: str(tmp_path / "1"), 7: str(tmp_path / "007"),
                                                           -4: str(tmp_path / "-4"), 5: str(tmp_path / "5"),
                                                           8: str(tmp_path / " 8")}
    assert version_policy.parse_version(str(-2 ** 63)) == -2 ** 63
    assert version_policy.parse_version(str(-2 ** 63 - 1)) is None
    # Two names of one version: the later in byte order ("7" after "007") is loaded.
    (tmp_path / "7").mkdir()
    assert version_policy.list_versions(str(tmp_path))[7] == str(tmp_path / "7")
