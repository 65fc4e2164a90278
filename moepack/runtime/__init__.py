"""moepack.runtime"""
