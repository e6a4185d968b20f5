"""The VAE latent-family benchmark runs end to end at toy sizes."""

import math

from benchmarks import vae_families


def test_vae_families_smoke(tmp_path):
    nll = vae_families.main(smoke=True)
    assert list(nll) == [2, 5, 10]
    for row in nll.values():
        assert list(row) == ["Normal", "Gamma", "Beta", "von Mises"]
        for value, stderr in row.values():
            # 64 binary pixels: the NLL of a one-epoch VAE lies above 0 and below 64 log 2 (a
            # coin per pixel); the IWAE estimate's standard error is finite and smaller.
            assert 0 < value < 64 * math.log(2)
            assert 0 <= stderr < value
    path = vae_families.figure(nll, folder=tmp_path)
    assert path == tmp_path / "vae_families.png" and path.stat().st_size > 1000
