"""bench/ceiling.py's log-likelihood ratio is the exact one of the generator's Gaussian noise."""

from bench.ceiling import llr
from kit.data.demo import DEFAULT_SCALE, style_from, synth_fragment


def test_the_llr_has_the_moments_of_an_exact_gaussian_likelihood_ratio():
    """For Gaussian noise an exact LLR is N(+m, 2m) on ink pixels and N(-m, 2m) elsewhere;
    a wrong σ, background or mean density breaks the symmetry or the variance."""
    frag = synth_fragment((160, 140), seed=1, index=0, scale=DEFAULT_SCALE / 3,
                          style=style_from("deep"))  # fmt: skip
    ratio = llr(frag)
    ink, none = ratio[frag.labels > 0], ratio[frag.mask & (frag.labels == 0)]
    m = (ink.mean() - none.mean()) / 2
    assert m > 0.5
    assert abs(ink.mean() + none.mean()) < 0.15 * m
    for part in (ink, none):
        assert abs(part.var() / (2 * m) - 1) < 0.15
    assert not ratio[~frag.mask].any()
