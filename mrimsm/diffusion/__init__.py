"""mrimsm.diffusion"""
