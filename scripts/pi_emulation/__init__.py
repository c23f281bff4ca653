"""Helpers for scripts/pi-emulation-check: the emulated Pi userland and the x86/ARM comparison.

Standard library only: the check runs before (and outside) any project environment.
"""
