"""moepack.formats"""
