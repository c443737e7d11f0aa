"""Tests of the training app and its Django-free trainers."""
