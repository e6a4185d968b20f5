"""The VAE latent-family benchmark runs end to end at toy sizes."""

import math

from benchmarks import vae_families


def test_vae_families_smoke():
    nll = vae_families.main(smoke=True)
    assert list(nll) == [2, 5, 10]
    # 64 binary pixels: an untrained VAE's NLL lies below 64 log 2 and above 0.
    assert all(0 < value < 64 * math.log(2) for row in nll.values() for value, _ in row.values())
