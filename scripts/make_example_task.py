r"""Writes a small binary task of our own, in another domain than the tweets, as a JSONL file
for `--config.task=file:PATH` (docs/design.md#tasks: `text`, `label`).

The task: is the thing a sentence mentions alive (an animal or a plant, label 1) or made by
people (label 0)? Sentences come from everyday templates, so the label is never in the template;
a model must know what the noun is. Used to check the default's settings on a task whose answer
we know (an easy, knowledge-based task: oracle labels should quickly beat chance).

  python scripts/make_example_task.py /tmp/living.jsonl
  bash scripts/main.sh /tmp/living_run --config.task=file:/tmp/living.jsonl
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

LIVING = """dog cat horse cow sheep goat pig rabbit fox wolf bear deer mouse rat squirrel owl eagle
sparrow crow pigeon duck goose swan frog toad snake lizard turtle salmon trout shark whale dolphin
octopus crab lobster bee wasp ant beetle butterfly moth spider snail worm oak pine maple
willow rose tulip daisy sunflower fern cactus mushroom moss ivy bamboo orchid lily hedgehog
badger otter beaver camel donkey parrot robin hawk bat goldfish tortoise""".split()
MADE = """hammer wrench bicycle car truck bus train chair table lamp sofa bed clock watch phone
laptop camera radio television kettle toaster fridge oven spoon fork knife plate bowl cup bottle
jar basket bucket ladder rope umbrella backpack suitcase wallet key lock door window fence bench
pencil pen notebook book envelope stamp coin ring necklace hat scarf glove boot sock shirt jacket
blanket pillow towel mirror brush comb candle drum guitar violin piano kite balloon""".split()
TEMPLATES = """My neighbour found a {x} near the garden gate this morning.
There was a {x} in the back of the shed when we cleaned it.
She took a photo of the {x} by the river.
The children kept talking about the {x} they saw at the market.
I almost tripped over a {x} on the path.
Someone left a {x} outside the library yesterday.
We noticed a {x} next to the old barn.
He drew a picture of a {x} for his art class.
A {x} was the first thing I saw when I opened the curtains.
The story was about a {x} that lived in a small village.
They moved the {x} to the other side of the yard.
Grandma still talks about the {x} she had as a child.
A {x} appeared in the corner of the photograph.
There is a {x} on the balcony again.
The teacher brought a {x} to show the class.
I read an article about a {x} this weekend.
Nobody knew where the {x} had come from.
The museum had a display with a very old {x}.
We heard that the {x} was bigger than usual this year.
My brother pointed at the {x} and laughed.
The {x} had been there since last winter.
A small {x} was hidden under the leaves.
On the way home we passed a {x}.
The farmer said the {x} belonged to his cousin.
I could not stop looking at the {x} in the window.
Mum asked me to keep an eye on the {x}.
The film opens with a shot of a lonely {x}.
A {x} was sitting quietly by the door.
The {x} in that picture looks exactly like ours.
Every morning the same {x} is in the park.""".splitlines()


def make_task(seed: int = 0) -> list[dict]:
    """Every (noun, template) sentence, shuffled; balanced as far as the noun lists are."""
    rows = [{"text": t.format(x=x), "label": label}
            for label, nouns in ((1, LIVING), (0, MADE)) for x in nouns for t in TEMPLATES]
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: python scripts/make_example_task.py OUT.jsonl")
    out = pathlib.Path(argv[1])
    rows = make_task()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} examples ({sum(r['label'] for r in rows)} alive) to {out}")


if __name__ == "__main__":
    main(sys.argv)
