"""GAN recipes, one file each; importing this package registers them all."""

from ray_ganime.recipes.base import RECIPES, Direction, Recipe, recipe_class, register
from ray_ganime.recipes import animegan, cartoongan, cyclegan, pix2pix  # noqa: F401  (registers)

__all__ = ["RECIPES", "Direction", "Recipe", "recipe_class", "register"]
