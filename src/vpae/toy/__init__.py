"""Everything toy: the procedural world and its oracle, the MiniLM and patch encoders, the caption bank and
the toy data source, toy evaluation, the CPU demo, the ablation runner and the shipped teacher (teacher/).
The core (losses, backbones, sampling, training) never imports this package."""
