"""python -m vitprobe"""

from .cli import main

main()
