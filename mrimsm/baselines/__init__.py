"""mrimsm.baselines"""
