"""--variant: the same bench again with extra engine flags; only the flags a variant names change."""

from __future__ import annotations

import argparse

from bench.harness import cli


def _variants(*texts: str, base: dict) -> list[tuple[str, dict]]:
    return cli.variants(argparse.Namespace(variant=list(texts)), base)


def test_a_variant_overrides_only_the_flags_it_names():
    base = {"dtype": "bfloat16", "cuda_graph_max_bs": 1024}
    runs = _variants("--triton-decode-max-bs 63", "--disable-mixed-chunk --cuda-graph-max-bs 256", base=base)
    assert runs[0] == ("", base)
    assert runs[1] == ("--triton-decode-max-bs 63", {**base, "triton_decode_max_bs": 63})
    # 256 is ServerArgs' own default, yet named: it replaces the base's 1024
    assert runs[2][1] == {**base, "disable_mixed_chunk": True, "cuda_graph_max_bs": 256}


def test_without_variants_only_the_plain_run():
    assert _variants(base={"dtype": "float32"}) == [("", {"dtype": "float32"})]


def test_the_flag_parses_repeatedly_and_with_leading_dashes():
    parser = argparse.ArgumentParser()
    cli.add_variant_flag(parser)
    args = parser.parse_args(["--variant=--disable-mixed-chunk", "--variant", "--triton-decode-max-bs 8"])
    assert args.variant == ["--disable-mixed-chunk", "--triton-decode-max-bs 8"]
