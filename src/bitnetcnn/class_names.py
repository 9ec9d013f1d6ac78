"""The class names of the built-in data sets, index = label, so a trained weight can say what it predicts.

A ground-floor module like ``normalization``: the data catalog gives them to training runs, and published weights
(``bitnetcnn/hub.py``) name them without importing the data code.

The orders are the data sets' own: MNIST's digits, Fashion-MNIST's and CIFAR's label tables (CIFAR-100's fine
labels are alphabetical, as in ``cifar-100-python/meta`` and ``cifar100.npz``'s ``fine_label_names``).
"""

from __future__ import annotations

DIGITS = tuple("0123456789")

FASHION_MNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100 = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())

# by the data set names bitnetcnn knows (its data catalog's), for a checkpoint that names its data set only
BY_DATASET: dict[str, tuple[str, ...]] = {"mnist_demo": DIGITS, "mnist": DIGITS, "fashion_mnist": FASHION_MNIST,
                                          "cifar10": CIFAR10, "cifar100": CIFAR100}
