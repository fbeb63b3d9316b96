"""mrimsm.models"""
