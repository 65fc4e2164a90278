"""moepack.kernels"""
