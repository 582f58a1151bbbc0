"""placeholder"""
class MMDetectionBackend:  # replaced below
    pass
