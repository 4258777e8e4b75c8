"""python -m stabilitylab"""

from .cli import run

run()
