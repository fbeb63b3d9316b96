"""mrimsm.data"""
