"""phonons"""
