"""moepack.source"""
